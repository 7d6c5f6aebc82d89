"""The result objects of one segmentation, all made from the same model run: the measurements, the JSON
fields as plain data, each PNG and each DICOM result. Free of HTTP: app/api builds its response models
from :meth:`SegmentationResults.fields`, the node and the batch job take the DICOM objects."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from app.pipeline.dicom.common import KINDS, ModelRef, ResultOptions, dataset_bytes
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.write import write_result
from app.pipeline.errors import PipelineError, Problem
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation
from app.pipeline.render import encode_png, mask_image, overlay_rgb, probability_image


class OutputFormat(str, Enum):
    """What one image's answer is: JSON, a PNG, one DICOM result, or several (``dicom``, multipart)."""

    json = "json"
    png = "png"
    dicom = "dicom"  # several DICOM results at once, one multipart/related part each
    dicom_seg = "dicom-seg"
    dicom_sc = "dicom-sc"
    dicom_sr = "dicom-sr"

    @property
    def dicom_kind(self) -> str | None:
        """The DICOM result kind (seg, sc, sr) of a single-result DICOM format, else None."""
        return self.value.removeprefix("dicom-") if self.value.startswith("dicom-") else None

    @property
    def needs_dicom(self) -> bool:
        """A DICOM result, which only a DICOM input can give."""
        return self.value.startswith("dicom")


class PngOutput(str, Enum):
    mask = "mask"
    overlay = "overlay"
    probability = "probability"
    lung = "lung"
    image = "image"  # the image as segmented: 8-bit gray after the DICOM LUTs, at its own size


@dataclass(frozen=True)
class Measurements:
    """What one segmentation measures: the figures of a JSON answer and of a batch table row."""

    threshold: float
    region_peak_threshold: float
    ppar: float
    infection_pixels: int
    lung_pixels: int
    lung_fraction: float
    infected_lung_share: float
    severity: str

    @classmethod
    def of(cls, seg: Segmentation) -> Measurements:
        return cls(seg.threshold, seg.region_peak_threshold, seg.ppar, seg.infection_pixels, seg.lung_pixels,
                   seg.lung_fraction, seg.infected_lung_share, seg.severity)

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def png_of(seg: Segmentation, loaded: LoadedImage, output: PngOutput) -> bytes:
    """One PNG of a segmentation, at the image's own size."""
    if output is PngOutput.overlay:
        return encode_png(overlay_rgb(loaded.gray, seg.infection_mask, seg.lung_mask))
    if output is PngOutput.probability:
        return encode_png(probability_image(seg.infection_probability()))
    if output is PngOutput.lung:
        return encode_png(mask_image(seg.lung_mask))
    if output is PngOutput.image:
        return encode_png(loaded.gray)
    return encode_png(mask_image(seg.infection_mask))


def dicom_of(kind: str, seg: Segmentation, loaded: LoadedImage, model: ModelRef, options: ResultOptions) -> bytes:
    """The DICOM result ``kind`` (seg, sc, sr) of a segmentation of a DICOM input; a source that lacks what
    the result must copy is ``incomplete_dicom``."""
    try:
        return dataset_bytes(write_result(kind, ResultContext(loaded, seg, model, options)))
    except PipelineError:  # the writers' own refusal already says what is missing
        raise
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        # highdicom refuses sources that lack what the result must copy (study, patient module...). Its message
        # is not echoed: it quotes the source's values, which are patient data.
        raise PipelineError(Problem.INVALID, "incomplete_dicom",
                            f"cannot build dicom-{kind} from this DICOM: an attribute the result copies is missing "
                            f"or has a value it cannot hold ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class SegmentationResults:
    """Everything one segmentation of one image gives, each made on demand from the same masks."""

    seg: Segmentation
    loaded: LoadedImage
    model: ModelRef
    options: ResultOptions

    @property
    def measurements(self) -> Measurements:
        return Measurements.of(self.seg)

    def fields(self, include: frozenset[PngOutput] = frozenset(), index: int = 0) -> dict[str, Any]:
        """The JSON fields of this image's answer, as plain data, with the PNGs of ``include`` embedded
        (base64); ``dicom`` (the source's UIDs) only for a DICOM input."""
        loaded = self.loaded
        fields: dict[str, Any] = {
            "index": index,
            "image": {"width": loaded.width, "height": loaded.height, "format": loaded.format, "mode": loaded.mode},
            "dicom": loaded.dicom.uids() if loaded.dicom is not None else None,
            **self.measurements.as_dict(),
            "judgement": None if self.seg.judgement is None else self.seg.judgement.figures(),
        }
        fields.update({f"{o.value}_png_base64": base64.b64encode(self.png(o)).decode() for o in include})
        return fields

    def png(self, output: PngOutput) -> bytes:
        return png_of(self.seg, self.loaded, output)

    def dicom(self, kind: str) -> bytes:
        """The DICOM result ``kind``, one of :data:`~app.pipeline.dicom.common.KINDS`."""
        if kind not in KINDS:
            raise ValueError(f"unknown DICOM result kind {kind!r}; choose from {', '.join(KINDS)}")
        return dicom_of(kind, self.seg, self.loaded, self.model, self.options)
