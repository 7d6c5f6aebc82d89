"""The engine: bytes in, segmentations and their results out, on one loaded model.

In MONAI Deploy's manner each step is a named unit with a typed input and output, composed here once:

    load (bytes -> LoadedImage) -> select (DICOM: is it a chest X-ray?) -> preprocess (-> network batch)
    -> infer (-> probabilities, with TTA) -> postprocess (-> Segmentation, under the threshold and the
    card's region rule) -> results (SegmentationResults: measurements, JSON fields, PNGs and DICOM objects
    of the same Segmentation)

``infer`` is ``expand`` (the batch the model runs on: with ``flip``, its mirrors too), the model run, and
``merge`` (one answer per image): the HTTP service runs the model itself (its micro-batcher and limiters)
between ``expand`` and ``merge``. What a caller leaves out is resolved here only: the threshold is the
card's default (:meth:`Engine.threshold`), the TTA the engine's default (:meth:`Engine.tta`), and the region
rule is the card's (:attr:`Engine.region_peak_threshold`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.card import CardError, ModelCard
from app.core.config import setting_default
from app.engine.results import Measurements, SegmentationResults
from app.pipeline.dicom.common import ModelRef, ResultOptions
from app.pipeline.infer import ModelLoadError, OnnxSegmenter, tta_expand, tta_merge
from app.pipeline.inputs import decode_upload
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation, postprocess
from app.pipeline.preprocess import preprocess_batch
from app.pipeline.select import SelectionRules, check_selected

if TYPE_CHECKING:
    from app.core.config import Settings

__all__ = ["FALLBACK_THRESHOLD", "Engine", "Measurements", "load_card"]

log = logging.getLogger("app.engine")
#: The threshold of a model without a card (older models).
FALLBACK_THRESHOLD = 0.5


def load_card(model_path: Path | str, model_sha256: str, verify: bool = True) -> ModelCard | None:
    """The model's card. An invalid card, or one that describes another file, stops start-up when
    ``verify`` (else a warning); a model without a card runs on the fallback threshold, with a warning."""
    if not ModelCard.json_path(Path(model_path)).is_file():
        log.warning("no model card beside %s; default threshold %.2f", model_path, FALLBACK_THRESHOLD)
        return None
    card: ModelCard | None = None
    try:
        card = ModelCard.load(Path(model_path))
        card.check_describes(model_sha256)
    except CardError as exc:
        if verify:
            raise ModelLoadError(str(exc)) from exc
        log.warning("%s (served anyway: COVIDSEG_VERIFY_CARD=false)", exc)
    return card


@dataclass
class Engine:
    """One loaded model (an ONNX Runtime session is thread-safe) and what its answers depend on."""

    model: OnnxSegmenter
    card: ModelCard | None
    result_options: ResultOptions = field(default_factory=ResultOptions)
    selection: SelectionRules = field(default_factory=SelectionRules)
    max_pixels: int = setting_default("max_pixels")
    default_tta: str = setting_default("tta")
    #: Evaluation only: another region rule than the card's (0 keeps every region); None: the card's.
    region_peak_override: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, intra_op_threads: int | None = None) -> Engine:
        """The engine the settings describe; ``intra_op_threads`` overrides theirs (a batch worker's share)."""
        threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
        model = OnnxSegmenter(settings.model_path, providers=settings.providers, intra_op_threads=threads,
                              inter_op_threads=settings.inter_op_threads, cuda=settings.cuda_options())
        return cls(model=model, card=load_card(settings.model_path, model.info.sha256, settings.verify_card),
                   result_options=settings.result_options(), selection=SelectionRules.from_settings(settings),
                   max_pixels=settings.max_pixels, default_tta=settings.tta)

    @property
    def default_threshold(self) -> float:
        """The card's default threshold (the fallback without a card)."""
        return FALLBACK_THRESHOLD if self.card is None else self.card.default_threshold

    @property
    def region_peak_threshold(self) -> float:
        """The model's region rule (its card), applied at every threshold; 0 (every region) without a card."""
        if self.region_peak_override is not None:
            return self.region_peak_override
        return 0.0 if self.card is None else self.card.region_peak_threshold

    def threshold(self, requested: float | None) -> float:
        """The caller's threshold, or the card's default (resolved here only)."""
        return self.default_threshold if requested is None else requested

    def tta(self, requested: str | None) -> str:
        """The caller's test-time augmentation, or the engine's default (resolved here only)."""
        return requested or self.default_tta

    def model_ref(self) -> ModelRef:
        info = self.model.info
        return ModelRef(info.name, info.version, info.sha256)

    def warm_up(self) -> None:
        """One inference, so that the first image does not pay for the graph's set-up."""
        size = self.model.info.input_size
        self.model.predict(np.zeros((1, 3, size, size), dtype=np.float32))

    # The steps.
    def load(self, data: bytes, filename: str | None = None, content_type: str | None = None) -> LoadedImage:
        return decode_upload(data, self.max_pixels, filename, content_type)

    def select(self, loaded: LoadedImage) -> None:
        """Refuse a DICOM the selection rules leave out (a knee, a lateral view...); PNG/JPEG pass."""
        if loaded.dicom is not None:
            check_selected(self.selection, loaded.dicom.dataset)

    def preprocess(self, images: list[LoadedImage]) -> np.ndarray:
        return preprocess_batch([im.gray for im in images], self.model.info.input_size)

    def expand(self, batch: np.ndarray, tta: str | None = None) -> np.ndarray:
        """What the model runs on for ``batch``: itself, or with ``flip`` followed by its mirrors."""
        return tta_expand(batch, self.tta(tta))

    def merge(self, outputs: np.ndarray, tta: str | None = None) -> np.ndarray:
        """The model's outputs of an expanded batch, back to one answer per image."""
        return tta_merge(outputs, self.tta(tta))

    def infer(self, batch: np.ndarray, tta: str | None = None) -> np.ndarray:
        """Probabilities (N, 2, S, S) of a preprocessed batch: one model run, TTA included."""
        return self.merge(self.model.predict(self.expand(batch, tta)), tta)

    def postprocess(self, probabilities: np.ndarray, images: list[LoadedImage], threshold: float) -> list[Segmentation]:
        """Each image's masks at its own size, under ``threshold`` and the region rule."""
        return [postprocess(p, im.width, im.height, threshold, self.region_peak_threshold)
                for p, im in zip(probabilities, images)]

    def results(self, seg: Segmentation, loaded: LoadedImage) -> SegmentationResults:
        """The result objects of one segmentation (JSON fields, PNGs, DICOM), made on demand."""
        return SegmentationResults(seg, loaded, self.model_ref(), self.result_options)

    # The composition.
    def segment(self, images: list[LoadedImage], threshold: float | None = None,
                tta: str | None = None) -> list[Segmentation]:
        """preprocess -> infer (one model run for all) -> postprocess."""
        return self.postprocess(self.infer(self.preprocess(images), tta), images, self.threshold(threshold))

    def dicom(self, kind: str, seg: Segmentation, loaded: LoadedImage) -> bytes:
        """The DICOM result ``kind`` (seg, sc, sr) of one segmentation of a DICOM input."""
        return self.results(seg, loaded).dicom(kind)
