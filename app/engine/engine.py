"""The engine: bytes in, segmentations and their results out, on one loaded model.

In MONAI Deploy's manner each step is a named unit with a typed input and output, composed here once:

    load (bytes -> LoadedImage) -> select (DICOM: is it a chest X-ray?) -> preprocess (-> network batch)
    -> infer (-> probabilities, with TTA) -> postprocess (-> Segmentation, under the threshold and the
    card's region rule) -> results (Measurements; PNGs and DICOM objects from the same Segmentation)

The threshold a caller leaves out is the card's default, resolved in :meth:`Engine.threshold` only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.card import CardError, ModelCard
from app.pipeline.dicom.common import ModelRef, ResultOptions, dataset_bytes
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.write import write_result
from app.pipeline.infer import ModelLoadError, OnnxSegmenter, predict_with_tta
from app.pipeline.inputs import decode_upload
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation, postprocess
from app.pipeline.preprocess import preprocess_batch
from app.pipeline.select import SelectionRules, check_selected

if TYPE_CHECKING:
    from app.core.config import Settings

log = logging.getLogger("app.engine")
#: The threshold of a model without a card (older models).
FALLBACK_THRESHOLD = 0.5


def load_card(settings: "Settings", model_sha256: str) -> ModelCard | None:
    """The model's card. Start-up stops when it is invalid or describes another file, unless
    ``verify_card`` is off; a model without a card runs on the fallback threshold, with a warning."""
    if not ModelCard.json_path(settings.model_path).is_file():
        log.warning("no model card beside %s; default threshold %.2f", settings.model_path, FALLBACK_THRESHOLD)
        return None
    card: ModelCard | None = None
    try:
        card = ModelCard.load(settings.model_path)
        card.check_describes(model_sha256)
    except CardError as exc:
        if settings.verify_card:
            raise ModelLoadError(str(exc)) from exc
        log.warning("%s (served anyway: COVIDSEG_VERIFY_CARD=false)", exc)
    return card


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
    def of(cls, seg: Segmentation) -> "Measurements":
        return cls(seg.threshold, seg.region_peak_threshold, seg.ppar, seg.infection_pixels, seg.lung_pixels,
                   seg.lung_fraction, seg.infected_lung_share, seg.severity)

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class Engine:
    """One loaded model (an ONNX Runtime session is thread-safe) and what its answers depend on."""

    model: OnnxSegmenter
    card: ModelCard | None
    result_options: ResultOptions = field(default_factory=ResultOptions)
    selection: SelectionRules = field(default_factory=SelectionRules)
    max_pixels: int = 50_000_000
    default_tta: str = "none"

    @classmethod
    def from_settings(cls, settings: "Settings", intra_op_threads: int | None = None) -> "Engine":
        """The engine the settings describe; ``intra_op_threads`` overrides theirs (a batch worker's share)."""
        threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
        model = OnnxSegmenter(settings.model_path, providers=settings.providers, intra_op_threads=threads,
                              inter_op_threads=settings.inter_op_threads, cuda=settings.cuda_options())
        return cls(model=model, card=load_card(settings, model.info.sha256), result_options=settings.result_options(),
                   selection=SelectionRules.from_settings(settings), max_pixels=settings.max_pixels,
                   default_tta=settings.tta)

    @property
    def default_threshold(self) -> float:
        return FALLBACK_THRESHOLD if self.card is None else self.card.default_threshold

    @property
    def region_peak_threshold(self) -> float:
        """The model's region rule (its card), applied at every threshold."""
        return 0.0 if self.card is None else self.card.region_peak_threshold

    def threshold(self, requested: float | None) -> float:
        """The caller's threshold, or the card's default (resolved here only)."""
        return self.default_threshold if requested is None else requested

    def model_ref(self) -> ModelRef:
        info = self.model.info
        return ModelRef(info.name, info.version, info.sha256)

    # The steps.
    def load(self, data: bytes, filename: str | None = None, content_type: str | None = None) -> LoadedImage:
        return decode_upload(data, self.max_pixels, filename, content_type)

    def select(self, loaded: LoadedImage) -> None:
        """Refuse a DICOM the selection rules leave out (a knee, a lateral view...); PNG/JPEG pass."""
        if loaded.dicom is not None:
            check_selected(self.selection, loaded.dicom.dataset)

    def preprocess(self, images: list[LoadedImage]) -> np.ndarray:
        return preprocess_batch([im.gray for im in images], self.model.info.input_size)

    def infer(self, batch: np.ndarray, tta: str | None = None) -> np.ndarray:
        return predict_with_tta(self.model, batch, tta or self.default_tta)

    def postprocess(self, probabilities: np.ndarray, images: list[LoadedImage], threshold: float) -> list[Segmentation]:
        return [postprocess(p, im.width, im.height, threshold, self.region_peak_threshold)
                for p, im in zip(probabilities, images)]

    # The composition.
    def segment(self, images: list[LoadedImage], threshold: float | None = None,
                tta: str | None = None) -> list[Segmentation]:
        """preprocess -> infer (one model run for all) -> postprocess."""
        return self.postprocess(self.infer(self.preprocess(images), tta), images, self.threshold(threshold))

    def dicom(self, kind: str, seg: Segmentation, loaded: LoadedImage) -> bytes:
        """The DICOM result ``kind`` (seg, sc, sr) of one segmentation of a DICOM input."""
        return dataset_bytes(write_result(kind, ResultContext(loaded, seg, self.model_ref(), self.result_options)))
