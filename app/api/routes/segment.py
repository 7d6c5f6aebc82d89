"""``POST /segment`` and ``POST /segment/batch``: masks, overlays, PPAR and thresholded outputs."""

from __future__ import annotations

import base64
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.api.deps import MetricsDep, ServiceDep, SettingsDep
from app.core.config import Settings
from app.core.metrics import ServiceMetrics
from app.pipeline.dicom.common import dataset_bytes
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.read import DICOM_MEDIA_TYPE
from app.pipeline.dicom.write import write_result
from app.pipeline.inputs import decode_upload
from app.pipeline.load import InputError, LoadedImage
from app.pipeline.postprocess import Segmentation
from app.pipeline.render import encode_png, mask_image, overlay_rgb, probability_image
from app.services.segmentation import SegmentationService, Timings

router = APIRouter(tags=["segment"])

SEVERITY_DOC = ("Severity grade from the share of the lung field predicted infected: none (nothing predicted), "
                "mild [0, 0.25), moderate [0.25, 0.5), severe [0.5, 0.75), critical [0.75, 1].")


class OutputFormat(str, Enum):
    json = "json"
    png = "png"
    dicom_seg = "dicom-seg"
    dicom_sc = "dicom-sc"
    dicom_sr = "dicom-sr"

    @property
    def dicom_kind(self) -> str | None:
        """The DICOM result kind (seg, sc, sr) of a DICOM format, else None."""
        return self.value.removeprefix("dicom-") if self.value.startswith("dicom-") else None


class PngOutput(str, Enum):
    mask = "mask"
    overlay = "overlay"
    probability = "probability"
    lung = "lung"


class ModelIdentity(BaseModel):
    name: str
    version: str
    sha256: str


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str = Field(description="detected file format (PNG, JPEG, ...)")
    mode: str = Field(description="pixel mode as decoded (L, I;16, RGB, ...)")


class DicomIdentifiers(BaseModel):
    """UIDs of a DICOM input (never patient name or ID)."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None


class SegmentResult(BaseModel):
    """Measurements of one image, at its own resolution."""

    index: int = Field(0, description="position of the file in the request")
    image: ImageInfo
    dicom: DicomIdentifiers | None = Field(None, description="for DICOM inputs: the source's UIDs")
    threshold: float = Field(description="infection decision threshold applied")
    ppar: float = Field(description="predicted positive area ratio: infection pixels / all image pixels")
    infection_pixels: int
    lung_pixels: int
    lung_fraction: float = Field(description="lung pixels / all image pixels")
    infected_lung_share: float = Field(description="infection pixels inside the lung / lung pixels")
    severity: str = Field(description=SEVERITY_DOC)
    mask_png_base64: str | None = Field(None, description="with include=mask: 0/255 infection mask PNG")
    overlay_png_base64: str | None = Field(None, description="with include=overlay: overlay PNG")
    probability_png_base64: str | None = Field(None, description="with include=probability: 8-bit probability PNG")
    lung_png_base64: str | None = Field(None, description="with include=lung: 0/255 lung mask PNG")


class SegmentResponse(SegmentResult):
    request_id: str
    model: ModelIdentity
    timings_ms: dict[str, float] = Field(description="decode, preprocess, inference, postprocess, total")


class BatchResponse(BaseModel):
    request_id: str
    model: ModelIdentity
    threshold: float
    results: list[SegmentResult] = Field(description="one result per file, in the order sent")
    timings_ms: dict[str, float]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty, truncated or corrupt file"},
    422: {"description": "invalid parameter (threshold, format, output, include), missing file, DICOM without "
                        "pixel data or multi-frame, or a DICOM output asked of a non-DICOM input"},
    401: {"description": "missing or invalid X-API-Key (when keys are configured)"},
    413: {"description": "file over the upload limit, or image over the pixel limit"},
    415: {"description": "not an image, or an unsupported format or pixel mode"},
    503: {"description": "model not loaded yet"},
}

ThresholdQuery = Annotated[float | None, Query(
    ge=0.0, le=1.0, allow_inf_nan=False,
    description="infection probability threshold in [0, 1]; default from the model card "
                "(0.5 conservative, 0.25 more sensitive)")]
IncludeQuery = Annotated[str | None, Query(
    description="comma list of PNGs to embed base64 in JSON: mask, overlay, probability, lung",
    examples=["mask,overlay"])]


def parse_include(include: str | None) -> set[str]:
    names = {x.strip() for x in (include or "").split(",") if x.strip()}
    unknown = names - {o.value for o in PngOutput}
    if unknown:
        raise InputError(422, "invalid_parameter",
                         f"include: unknown output(s) {sorted(unknown)}; choose from mask, overlay, probability, lung")
    return names


async def read_upload(file: UploadFile, settings: Settings, timings: Timings, index: int | None = None) -> LoadedImage:
    """Read one upload (in memory) and decode it off the event loop."""
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise InputError(413, "payload_too_large",
                         f"{'file' if index is None else f'file {index}'} is larger than the upload limit of {settings.max_upload_bytes} bytes")
    try:
        return await timings.run("decode", decode_upload, data, settings.max_pixels, file.filename,
                                 file.content_type)
    except InputError as exc:
        if index is not None:
            exc.message = f"file {index}: {exc.message}"
        raise


def png_of(seg: Segmentation, loaded: LoadedImage, output: str) -> bytes:
    if output == PngOutput.overlay.value:
        return encode_png(overlay_rgb(loaded.gray, seg.infection_mask, seg.lung_mask))
    if output == PngOutput.probability.value:
        return encode_png(probability_image(seg.infection_probability))
    if output == PngOutput.lung.value:
        return encode_png(mask_image(seg.lung_mask))
    return encode_png(mask_image(seg.infection_mask))


def summary_headers(seg: Segmentation, service: SegmentationService) -> dict[str, str]:
    """The key figures as headers, for clients of the binary (PNG, DICOM) answers."""
    return {"X-PPAR": f"{seg.ppar:.6f}", "X-Threshold": f"{seg.threshold}", "X-Severity": seg.severity,
            "X-Model-Version": service.model.info.version, "Cache-Control": "no-store"}


def dicom_output(format: OutputFormat, seg: Segmentation, loaded: LoadedImage, service: SegmentationService) -> bytes:
    """The SEG, SC or SR of a DICOM input, as Part 10 bytes."""
    ctx = ResultContext(loaded, seg, service.model_ref(), service.result_options)
    try:
        return dataset_bytes(write_result(format.dicom_kind, ctx))
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        # highdicom refuses sources that lack what SEG/SC must copy (study, patient module...)
        raise InputError(422, "incomplete_dicom",
                         f"cannot build {format.value} from this DICOM: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}") from exc


def result_of(seg: Segmentation, loaded: LoadedImage, include: set[str], index: int = 0) -> SegmentResult:
    embedded = {f"{name}_png_base64": base64.b64encode(png_of(seg, loaded, name)).decode() for name in include}
    return SegmentResult(
        index=index,
        image=ImageInfo(width=loaded.width, height=loaded.height, format=loaded.format, mode=loaded.mode),
        dicom=DicomIdentifiers(**loaded.dicom.uids()) if loaded.dicom is not None else None,
        threshold=seg.threshold, ppar=seg.ppar, infection_pixels=seg.infection_pixels, lung_pixels=seg.lung_pixels,
        lung_fraction=seg.lung_fraction, infected_lung_share=seg.infected_lung_share, severity=seg.severity,
        **embedded,
    )


async def run_model(service: SegmentationService, metrics: ServiceMetrics, images: list[LoadedImage], threshold: float,
                    timings: Timings) -> list[Segmentation]:
    before = timings.inference
    segs = await service.segment(images, threshold, timings)
    metrics.inference.observe((timings.inference - before) / 1000)
    metrics.batch_size.observe(len(images))
    metrics.images.inc(len(images))
    return segs


@router.post(
    "/segment",
    summary="Segment infection and lung on one chest X-ray",
    response_model=SegmentResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"image/png": {}},
                                        "description": "JSON measurements, or a PNG with format=png"}},
)
async def segment(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    file: Annotated[UploadFile, File(description="PNG or JPEG (8/16-bit gray, RGB, RGBA, palette) or DICOM")],
    threshold: ThresholdQuery = None,
    format: Annotated[OutputFormat | None, Query(
        description="json (default), png (an Accept: image/png header also selects it), dicom-seg (DICOM "
                    "Segmentation of infection and lung), dicom-sc (Secondary Capture of the overlay) or dicom-sr "
                    "(TID 1500 measurement report); "
                    "the DICOM outputs for DICOM inputs only")] = None,
    output: Annotated[PngOutput, Query(
        description="with format=png: mask (0/255), overlay, probability (8-bit) or lung (0/255); "
                    "at the input's width and height")] = PngOutput.mask,
    include: IncludeQuery = None,
):
    include_set = parse_include(include)
    th = service.default_threshold if threshold is None else threshold
    if format is None:
        format = OutputFormat.png if "image/png" in request.headers.get("accept", "") else OutputFormat.json
    timings = Timings()
    loaded = await read_upload(file, settings, timings)
    if format.dicom_kind and loaded.dicom is None:
        raise InputError(422, "invalid_parameter", f"format={format.value} needs a DICOM input; "
                                                   f"this file is {loaded.format}")
    seg = (await run_model(service, metrics, [loaded], th, timings))[0]
    rid = request.state.request_id
    if format.dicom_kind:
        dicom = await timings.run("postprocess", dicom_output, format, seg, loaded, service)
        return Response(dicom, media_type=DICOM_MEDIA_TYPE, headers=summary_headers(seg, service))
    if format is OutputFormat.png:
        png = await timings.run("postprocess", png_of, seg, loaded, output.value)
        return Response(png, media_type="image/png", headers=summary_headers(seg, service))
    result = await timings.run("postprocess", result_of, seg, loaded, include_set)
    body = SegmentResponse(**result.model_dump(), request_id=rid, model=ModelIdentity(**service.model_identity()),
                           timings_ms=timings.as_dict())
    return JSONResponse(body.model_dump(exclude_none=True), headers={"Cache-Control": "no-store"})


@router.post(
    "/segment/batch",
    summary="Segment several chest X-rays in one model run",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
)
async def segment_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    files: Annotated[list[UploadFile], File(description="several images, repeated multipart field 'files'")],
    threshold: ThresholdQuery = None,
    include: IncludeQuery = None,
):
    include_set = parse_include(include)
    if len(files) > settings.max_batch_files:
        raise InputError(413, "too_many_files",
                         f"{len(files)} files sent; at most {settings.max_batch_files} per batch request")
    th = service.default_threshold if threshold is None else threshold
    timings = Timings()
    loaded = [await read_upload(f, settings, timings, index=i) for i, f in enumerate(files)]
    segs = await run_model(service, metrics, loaded, th, timings)

    def _results() -> list[SegmentResult]:
        return [result_of(s, im, include_set, i) for i, (s, im) in enumerate(zip(segs, loaded))]

    results = await timings.run("postprocess", _results)
    body = BatchResponse(request_id=request.state.request_id, model=ModelIdentity(**service.model_identity()),
                         threshold=th, results=results, timings_ms=timings.as_dict())
    return JSONResponse(body.model_dump(exclude_none=True), headers={"Cache-Control": "no-store"})
