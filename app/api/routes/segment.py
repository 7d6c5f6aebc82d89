"""``POST /segment`` and ``POST /segment/batch``: parse the request, call the service, answer."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.schemas import (ERROR_RESPONSES, BatchResponse, ModelIdentity, OutputFormat, PngOutput,
                             SegmentResponse, SegmentResult)
from app.core.config import Settings
from app.core.disconnect import unless_client_leaves
from app.pipeline.errors import PipelineError, Problem
from app.services.outputs import Finished, OutputSpec
from app.services.segmentation import SegmentationService, Timings, Upload

router = APIRouter(tags=["segment"])

ThresholdQuery = Annotated[float | None, Query(
    ge=0.0, le=1.0, allow_inf_nan=False,
    description="infection probability threshold in [0, 1]; default from the model card "
                "(0.5 conservative, 0.25 more sensitive)")]
IncludeQuery = Annotated[str | None, Query(
    description="comma list of PNGs to embed base64 in JSON: mask, overlay, probability, lung, image",
    examples=["mask,overlay"])]
FormatQuery = Annotated[OutputFormat | None, Query(
    description="json (default), png (an Accept: image/png header also selects it), dicom-seg (DICOM "
                "Segmentation of infection and lung), dicom-sc (Secondary Capture of the overlay), dicom-sr "
                "(TID 1500 measurement report), or dicom: the results named by outputs in one "
                "multipart/related; type=\"application/dicom\" answer (one model run); the DICOM outputs for "
                "DICOM inputs only")]
OutputsQuery = Annotated[str | None, Query(
    description="with format=dicom: comma list of DICOM results, one part each in this order: seg, sc, sr "
                "(default all three)", examples=["seg,sc,sr"])]
TtaQuery = Annotated[Literal["none", "flip"] | None, Query(
    description="test-time augmentation: none, or flip (mean of the image's and its mirror's probabilities; "
                "twice the compute); default from COVIDSEG_TTA")]
OutputQuery = Annotated[PngOutput, Query(
    description="with format=png: mask (0/255), overlay, probability (8-bit), lung (0/255) or image "
                "(the image as segmented: 8-bit gray after the DICOM LUTs); at the input's width and height")]
SelectionQuery = Annotated[Literal["apply", "ignore"], Query(
    description="DICOM inputs: apply (default) refuses, with 422 not_selected, what the COVIDSEG_SELECT_* rules of "
                "the node and the bridge leave out (a knee, a lateral view, another modality, a FOR PROCESSING "
                "image); ignore segments it anyway, for research use. PNG and JPEG inputs are not judged")]


async def read_upload(file: UploadFile, settings: Settings, index: int | None = None) -> Upload:
    """Read one upload into memory, refusing it past the upload limit."""
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        which = "file" if index is None else f"file {index}"
        raise PipelineError(Problem.TOO_LARGE, "payload_too_large",
                            f"{which} is larger than the upload limit of {settings.max_upload_bytes} bytes")
    return Upload(data, file.filename, file.content_type, index)


async def refuse_a_second_file(request: Request) -> None:
    """``/segment`` answers for one image: a second part in field 'file' would be silently dropped."""
    sent = (await request.form()).getlist("file")  # the form FastAPI parsed, cached by Starlette
    if len(sent) > 1:
        raise PipelineError(Problem.INVALID, "too_many_files",
                            f"{len(sent)} files sent in field 'file'; /segment takes one: send several to "
                            "/segment/batch in repeated fields 'files'")


def media_weights(accept: str) -> dict[str, float]:
    """An Accept header's media ranges (lower case) and their q values (RFC 9110 12.5.1; a q that is no number
    is 0)."""
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for name, _, value in (p.partition("=") for p in params):
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if media:
            weights[media.lower()] = max(q, weights.get(media.lower(), 0.0))
    return weights


def png_preferred(accept: str) -> bool:
    """Whether ``Accept`` asks for PNG: image/png (any case) with q above 0 and not below application/json's."""
    weights = media_weights(accept)
    png = weights.get("image/png", 0.0)
    return png > 0 and png >= weights.get("application/json", 0.0)


def binary_answer(finished: Finished, service: SegmentationService) -> Response:
    """A PNG or DICOM answer, with the key figures as headers."""
    seg = finished.seg
    headers = {"X-PPAR": f"{seg.ppar:.6f}", "X-Threshold": f"{seg.threshold}", "X-Severity": seg.severity,
               "X-Model-Version": service.engine.model.info.version, "Cache-Control": "no-store"}
    return Response(finished.payload, media_type=finished.media_type, headers=headers)


def json_answer(body: SegmentResponse | BatchResponse) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), headers={"Cache-Control": "no-store"})


@router.post("/segment", summary="Segment infection and lung on one chest X-ray", response_model=SegmentResponse,
             responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}, "application/dicom": {},
                                                             "multipart/related": {}},
                                                 "description": "JSON measurements, a PNG, a DICOM object or "
                                                                "several (format=dicom)"}})
async def segment(request: Request, service: ServiceDep, settings: SettingsDep,
                  file: Annotated[UploadFile, File(description="PNG or JPEG (8/16-bit gray, RGB, RGBA, palette, "
                                                               "CMYK) or DICOM")],
                  threshold: ThresholdQuery = None, format: FormatQuery = None,
                  output: OutputQuery = PngOutput.mask, include: IncludeQuery = None, tta: TtaQuery = None,
                  selection: SelectionQuery = "apply", outputs: OutputsQuery = None):
    await refuse_a_second_file(request)
    if format is None:
        format = OutputFormat.png if png_preferred(request.headers.get("accept", "")) else OutputFormat.json
    spec = OutputSpec(format, service.engine.threshold(threshold), output, OutputSpec.parse_include(include), tta,
                      apply_selection=selection == "apply", kinds=OutputSpec.parse_outputs(outputs, format))
    timings = Timings()
    upload = await read_upload(file, settings)
    finished = (await unless_client_leaves(request.receive, service.process([upload], spec, timings)))[0]
    if finished.payload is not None:
        return binary_answer(finished, service)
    return json_answer(SegmentResponse(**finished.fields, request_id=request.state.request_id,
                                       model=ModelIdentity(**service.model_identity()), timings_ms=timings.as_dict()))


@router.post("/segment/batch", summary="Segment several chest X-rays in one model run", response_model=BatchResponse,
             responses=ERROR_RESPONSES)
async def segment_batch(request: Request, service: ServiceDep, settings: SettingsDep,
                        files: Annotated[list[UploadFile], File(description="several images, repeated multipart "
                                                                            "field 'files'")],
                        threshold: ThresholdQuery = None, include: IncludeQuery = None, tta: TtaQuery = None,
                        selection: SelectionQuery = "apply"):
    if len(files) > settings.max_batch_files:
        raise PipelineError(Problem.TOO_LARGE, "too_many_files",
                            f"{len(files)} files sent; at most {settings.max_batch_files} per batch request")
    spec = OutputSpec(OutputFormat.json, service.engine.threshold(threshold),
                      include=OutputSpec.parse_include(include), tta=tta, apply_selection=selection == "apply")
    timings = Timings()
    uploads = [await read_upload(f, settings, index=i) for i, f in enumerate(files)]
    finished = await unless_client_leaves(request.receive, service.process(uploads, spec, timings))
    return json_answer(BatchResponse(request_id=request.state.request_id,
                                     model=ModelIdentity(**service.model_identity()), threshold=spec.threshold,
                                     results=[SegmentResult(**f.fields) for f in finished],
                                     timings_ms=timings.as_dict()))
