"""What a request asked for, and the finished outputs of one segmented image: the JSON fields,
a PNG, or a DICOM object. Shared by the single and the batch route."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from app.api.schemas import DicomIdentifiers, ImageInfo, OutputFormat, PngOutput, SegmentResult
from app.pipeline.dicom.common import ModelRef, ResultOptions, dataset_bytes
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.read import DICOM_MEDIA_TYPE
from app.pipeline.dicom.write import write_result
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation
from app.pipeline.render import encode_png, mask_image, overlay_rgb, probability_image


@dataclass(frozen=True)
class OutputSpec:
    """The outputs a request asked for, with the threshold resolved."""

    format: OutputFormat
    threshold: float
    png: PngOutput = PngOutput.mask
    include: frozenset[PngOutput] = frozenset()
    tta: str | None = None  # None: the service's default
    apply_selection: bool = True  # False: selection=ignore, DICOM inputs the selection rules leave out too

    @staticmethod
    def parse_include(include: str | None) -> frozenset[PngOutput]:
        names = {x.strip() for x in (include or "").split(",") if x.strip()}
        unknown = names - {o.value for o in PngOutput}
        if unknown:
            raise PipelineError(Problem.INVALID, "invalid_parameter",
                                f"include: unknown output(s) {sorted(unknown)}; choose from "
                                + ", ".join(o.value for o in PngOutput))
        return frozenset(PngOutput(n) for n in names)

    def check_input(self, loaded: LoadedImage) -> None:
        if self.format.dicom_kind and loaded.dicom is None:
            raise PipelineError(Problem.INVALID, "invalid_parameter",
                                f"format={self.format.value} needs a DICOM input; this file is {loaded.format}")


@dataclass
class Finished:
    """One image's answer: its measurements, and the binary output when one was asked for."""

    result: SegmentResult
    seg: Segmentation
    payload: bytes | None = None
    media_type: str = "application/json"


def png_of(seg: Segmentation, loaded: LoadedImage, output: PngOutput) -> bytes:
    if output is PngOutput.overlay:
        return encode_png(overlay_rgb(loaded.gray, seg.infection_mask, seg.lung_mask))
    if output is PngOutput.probability:
        return encode_png(probability_image(seg.infection_probability()))
    if output is PngOutput.lung:
        return encode_png(mask_image(seg.lung_mask))
    if output is PngOutput.image:
        return encode_png(loaded.gray)
    return encode_png(mask_image(seg.infection_mask))


def result_of(seg: Segmentation, loaded: LoadedImage, include: frozenset[PngOutput], index: int = 0) -> SegmentResult:
    embedded = {f"{o.value}_png_base64": base64.b64encode(png_of(seg, loaded, o)).decode() for o in include}
    return SegmentResult(
        index=index,
        image=ImageInfo(width=loaded.width, height=loaded.height, format=loaded.format, mode=loaded.mode),
        dicom=DicomIdentifiers(**loaded.dicom.uids()) if loaded.dicom is not None else None,
        threshold=seg.threshold, region_peak_threshold=seg.region_peak_threshold, ppar=seg.ppar,
        infection_pixels=seg.infection_pixels, lung_pixels=seg.lung_pixels,
        lung_fraction=seg.lung_fraction, infected_lung_share=seg.infected_lung_share, severity=seg.severity,
        **embedded,
    )


def dicom_of(kind: str, seg: Segmentation, loaded: LoadedImage, model: ModelRef, options: ResultOptions) -> bytes:
    try:
        return dataset_bytes(write_result(kind, ResultContext(loaded, seg, model, options)))
    except PipelineError:  # the writers' own refusal already says what is missing
        raise
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        # highdicom refuses sources that lack what the result must copy (study, patient module...)
        raise PipelineError(Problem.INVALID, "incomplete_dicom",
                            f"cannot build dicom-{kind} from this DICOM: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc


def finish(seg: Segmentation, loaded: LoadedImage, spec: OutputSpec, index: int, model: ModelRef,
           options: ResultOptions) -> Finished:
    """The outputs of one image as the request asked for them."""
    if spec.format.dicom_kind:
        payload = dicom_of(spec.format.dicom_kind, seg, loaded, model, options)
        return Finished(result_of(seg, loaded, frozenset(), index), seg, payload, DICOM_MEDIA_TYPE)
    if spec.format is OutputFormat.png:
        return Finished(result_of(seg, loaded, frozenset(), index), seg, png_of(seg, loaded, spec.png), "image/png")
    return Finished(result_of(seg, loaded, spec.include, index), seg)
