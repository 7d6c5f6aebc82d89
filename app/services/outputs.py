"""What a request asked for, and the finished answer of one segmented image: its JSON fields (plain data:
app/api makes the response model), a PNG, one DICOM object, or several in one multipart/related body.
Shared by the single and the batch route; the result objects themselves come from the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.results import OutputFormat, PngOutput, SegmentationResults
from app.pipeline.dicom.common import KINDS
from app.pipeline.dicom.multipart import multipart_related
from app.pipeline.dicom.read import DICOM_MEDIA_TYPE
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation


def _invalid(message: str) -> PipelineError:
    return PipelineError(Problem.INVALID, "invalid_parameter", message)


@dataclass(frozen=True)
class OutputSpec:
    """The outputs a request asked for, with the threshold resolved."""

    format: OutputFormat
    threshold: float
    png: PngOutput = PngOutput.mask
    include: frozenset[PngOutput] = frozenset()
    tta: str | None = None  # None: the engine's default
    apply_selection: bool = True  # False: selection=ignore, DICOM inputs the selection rules leave out too
    kinds: tuple[str, ...] = ()  # format=dicom: the DICOM results, in the order asked

    @staticmethod
    def parse_include(include: str | None) -> frozenset[PngOutput]:
        names = {x.strip() for x in (include or "").split(",") if x.strip()}
        unknown = names - {o.value for o in PngOutput}
        if unknown:
            raise _invalid(f"include: unknown output(s) {sorted(unknown)}; choose from "
                           + ", ".join(o.value for o in PngOutput))
        return frozenset(PngOutput(n) for n in names)

    @staticmethod
    def parse_outputs(outputs: str | None, format: OutputFormat) -> tuple[str, ...]:
        """The DICOM results of ``format=dicom``, in the order asked (all of them when not said)."""
        if format is not OutputFormat.dicom:
            if outputs is not None:
                raise _invalid(f"outputs: only with format=dicom (several DICOM results in one answer), "
                               f"not format={format.value}")
            return ()
        names = [x.strip() for x in (outputs if outputs is not None else ",".join(KINDS)).split(",") if x.strip()]
        unknown = sorted(set(names) - set(KINDS))
        if unknown or not names:
            raise _invalid(f"outputs: {'unknown result(s) ' + str(unknown) if unknown else 'none asked'}; "
                           "choose one or more of " + ", ".join(KINDS))
        if len(set(names)) < len(names):
            raise _invalid(f"outputs: each result once; got {','.join(names)}")
        return tuple(names)

    def check_input(self, loaded: LoadedImage) -> None:
        if self.format.needs_dicom and loaded.dicom is None:
            raise _invalid(f"format={self.format.value} needs a DICOM input; this file is {loaded.format}")


@dataclass
class Finished:
    """One image's answer: its JSON fields and masks, and the binary output when one was asked for."""

    fields: dict[str, Any]
    seg: Segmentation
    payload: bytes | None = None
    media_type: str = "application/json"


def finish(results: SegmentationResults, spec: OutputSpec, index: int) -> Finished:
    """The outputs of one image as the request asked for them."""
    seg = results.seg
    if spec.format is OutputFormat.json:
        return Finished(results.fields(spec.include, index), seg)
    if spec.format is OutputFormat.dicom:
        payload, media_type = multipart_related([results.dicom(kind) for kind in spec.kinds])
    elif spec.format.dicom_kind:
        payload, media_type = results.dicom(spec.format.dicom_kind), DICOM_MEDIA_TYPE
    else:
        payload, media_type = results.png(spec.png), "image/png"
    return Finished(results.fields(index=index), seg, payload, media_type)
