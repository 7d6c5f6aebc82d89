"""The engine: bytes in, segmentations and their results out, on one loaded model.

In MONAI Deploy's manner each step is a named unit with a typed input and output, composed here once:

    load (bytes -> ParsedInput: a DICOM's header parsed, no pixel decoded) -> select (DICOM: is it a chest
    X-ray? judged from the header) -> decode (-> LoadedImage) -> preprocess (-> network batch) -> infer
    (-> ModelOutputs: probabilities and the judgement's scores, with TTA) -> judge (-> Judgement: can the model
    read this image? a refusal when not) -> postprocess (-> Segmentation, under the threshold and the
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.card import CardError, ModelCard
from app.core.config import setting_default
from app.engine.results import Measurements, SegmentationResults
from app.pipeline.dicom.common import ModelRef, ResultOptions
from app.pipeline.errors import PipelineError
from app.pipeline.infer import (FEATURE_DISTANCE, FRONTAL_SCORE, ModelLoadError, ModelOutputs, OnnxSegmenter,
                                resolve_providers, tta_expand, tta_merge_outputs)
from app.pipeline.inputs import ParsedInput, decode_parsed, parse_upload
from app.pipeline.judge import NOT_A_CHEST, JudgeLimits, Judgement, appears_inverted, judged, measure
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
    #: Why this model was loaded (the setting, or the default for the execution provider).
    model_choice: str = "given"

    @classmethod
    def from_settings(cls, settings: Settings, intra_op_threads: int | None = None) -> Engine:
        """The engine the settings describe; ``intra_op_threads`` overrides theirs (a batch worker's share)."""
        threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
        providers = resolve_providers(settings.providers)
        path, choice = settings.model_for(providers)
        model = OnnxSegmenter(path, providers=providers, intra_op_threads=threads,
                              inter_op_threads=settings.inter_op_threads, cuda=settings.cuda_options())
        return cls(model=model, card=load_card(path, model.info.sha256, settings.verify_card),
                   result_options=settings.result_options(), selection=SelectionRules.from_settings(settings),
                   max_pixels=settings.max_pixels, default_tta=settings.tta, model_choice=choice)

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

    @property
    def judge_limits(self) -> JudgeLimits:
        """The input judgement's limits: the card's (set on the model's own Val figures), else the defaults."""
        judgement = None if self.card is None else self.card.input_judgement
        return JudgeLimits.from_card(None if judgement is None else judgement.limits)

    def threshold(self, requested: float | None) -> float:
        """The caller's threshold, or the card's default (resolved here only); -0.0 is 0.0, so one value is one
        answer and one result (its UIDs and its algorithm parameters name it)."""
        return self.default_threshold if requested is None else float(requested) + 0.0

    def tta(self, requested: str | None) -> str:
        """The caller's test-time augmentation, or the engine's default (resolved here only)."""
        return requested or self.default_tta

    def model_ref(self) -> ModelRef:
        info = self.model.info
        return ModelRef(info.name, info.version, info.sha256)

    def warm_up(self) -> None:
        """One inference, so that the first image does not pay for the graph's set-up."""
        size = self.model.info.input_size
        self.model.run(np.zeros((1, 3, size, size), dtype=np.float32))

    # The steps.
    def load(self, data: bytes, filename: str | None = None, content_type: str | None = None) -> ParsedInput:
        """What the upload is, a DICOM's header parsed; nothing decoded yet."""
        return parse_upload(data, filename, content_type)

    def select(self, parsed: ParsedInput) -> None:
        """Refuse, from its header, a DICOM the selection rules leave out (a knee, a lateral view...), before
        its pixels cost a decoding; PNG/JPEG pass."""
        if parsed.dataset is not None:
            check_selected(self.selection, parsed.dataset)

    def decode(self, parsed: ParsedInput) -> LoadedImage:
        """Check the image from its header (pixel limit, frames, photometric), then decode it to gray."""
        return decode_parsed(parsed, self.max_pixels)

    def read(self, data: bytes, filename: str | None = None, content_type: str | None = None,
             selection: bool = True) -> LoadedImage:
        """load -> select (unless ``selection`` is False) -> decode: an input ready to preprocess."""
        parsed = self.load(data, filename, content_type)
        if selection:
            self.select(parsed)
        return self.decode(parsed)

    def preprocess(self, images: list[LoadedImage]) -> np.ndarray:
        return preprocess_batch([im.gray for im in images], self.model.info.input_size)

    def expand(self, batch: np.ndarray, tta: str | None = None) -> np.ndarray:
        """What the model runs on for ``batch``: itself, or with ``flip`` followed by its mirrors."""
        return tta_expand(batch, self.tta(tta))

    def merge(self, outputs: ModelOutputs, tta: str | None = None) -> ModelOutputs:
        """The model's outputs of an expanded batch, back to one answer per image."""
        return tta_merge_outputs(outputs, self.tta(tta))

    def infer(self, batch: np.ndarray, tta: str | None = None) -> ModelOutputs:
        """Probabilities (N, 2, S, S) and judgement scores of a preprocessed batch: one model run, TTA included."""
        return self.merge(self.model.run(self.expand(batch, tta)), tta)

    def judge(self, batch: np.ndarray, outputs: ModelOutputs, images: list[LoadedImage],
              run: Callable[[np.ndarray], ModelOutputs] | None = None,
              until_refused: bool = False) -> list[Judgement]:
        """Can the model read each image? ``batch`` is the preprocessed batch (without TTA mirrors), ``outputs``
        its merged outputs. An image refused as no chest gets a second model run (``run``, default the
        model's own) on its negative: when that passes, the refusal is ``appears_inverted``. With
        ``until_refused`` the judgement stops at the first refusal (a request refused whole needs no more)."""
        limits, found = self.judge_limits, []
        for i, image in enumerate(images):
            judgement = self._judged(batch[i:i + 1], outputs[i:i + 1], limits)
            if judgement.refusal is not None and judgement.refusal.code == NOT_A_CHEST:
                negative = self._judged(-batch[i:i + 1], (run or self.model.run)(-batch[i:i + 1]), limits)
                if negative.accepted:
                    judgement = replace(judgement, refusal=appears_inverted(judgement.refusal, image.dicom is not None))
            found.append(judgement)
            if until_refused and judgement.refusal is not None:
                break
        return found

    def measured(self, batch: np.ndarray, outputs: ModelOutputs) -> list[Judgement]:
        """Each image's judgement figures under the card's limits, without the inversion check (no second model
        run): what calibrating the limits needs (``training.judge_limits``)."""
        limits = self.judge_limits
        return [self._judged(batch[i:i + 1], outputs[i:i + 1], limits) for i in range(len(outputs))]

    @staticmethod
    def _judged(one: np.ndarray, outputs: ModelOutputs, limits: JudgeLimits) -> Judgement:
        return judged(measure(one[0, 0], outputs.probabilities[0, 1], outputs.score(FEATURE_DISTANCE, 0),
                              outputs.score(FRONTAL_SCORE, 0)), limits)

    def postprocess(self, probabilities: np.ndarray, images: list[LoadedImage], threshold: float,
                    judgements: list[Judgement] | None = None, tta: str | None = None) -> list[Segmentation]:
        """Each image's masks at its own size, under ``threshold`` and the region rule (with its judgement and
        the TTA its probabilities came from)."""
        segs = [postprocess(p, im.width, im.height, threshold, self.region_peak_threshold)
                for p, im in zip(probabilities, images)]
        for seg, judgement in zip(segs, judgements or [None] * len(segs)):
            seg.judgement, seg.tta = judgement, self.tta(tta)
        return segs

    def results(self, seg: Segmentation, loaded: LoadedImage) -> SegmentationResults:
        """The result objects of one segmentation (JSON fields, PNGs, DICOM), made on demand."""
        return SegmentationResults(seg, loaded, self.model_ref(), self.result_options)

    # The composition.
    def segment_each(self, images: list[LoadedImage], threshold: float | None = None,
                     tta: str | None = None) -> list[Segmentation | PipelineError]:
        """preprocess -> infer (one model run for all) -> judge -> postprocess: each image's segmentation, or
        the judgement's refusal (no segmentation is made for a refused image)."""
        batch = self.preprocess(images)
        outputs = self.infer(batch, tta)
        judgements = self.judge(batch, outputs, images)
        found: list[Segmentation | PipelineError] = []
        for i, (image, judgement) in enumerate(zip(images, judgements)):
            found += [judgement.refusal] if judgement.refusal is not None else self.postprocess(
                outputs.probabilities[i:i + 1], [image], self.threshold(threshold), [judgement], tta)
        return found

    def segment(self, images: list[LoadedImage], threshold: float | None = None,
                tta: str | None = None) -> list[Segmentation]:
        """:meth:`segment_each`, raising the first refusal (PipelineError) when any image is refused."""
        found = self.segment_each(images, threshold, tta)
        refused = next((x for x in found if isinstance(x, PipelineError)), None)
        if refused is not None:
            raise refused
        return found  # type: ignore[return-value]

    def dicom(self, kind: str, seg: Segmentation, loaded: LoadedImage) -> bytes:
        """The DICOM result ``kind`` (seg, sc, sr) of one segmentation of a DICOM input."""
        return self.results(seg, loaded).dicom(kind)
