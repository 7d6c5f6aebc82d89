"""The loaded model and its card, and the shared middle of every input path:
preprocess -> infer -> postprocess, for one image or a batch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import anyio
import numpy as np

from app.card import CardError, ModelCard
from app.core.config import Settings
from app.pipeline.dicom.common import ModelRef, ResultOptions
from app.core.metrics import ServiceMetrics
from app.pipeline.errors import PipelineError
from app.pipeline.inputs import decode_upload
from app.services.outputs import Finished, OutputSpec, finish
from app.pipeline.infer import ModelLoadError, OnnxSegmenter, predict_with_tta, tta_expand, tta_merge
from app.services.batcher import MicroBatcher
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation, postprocess
from app.pipeline.preprocess import preprocess_batch

log = logging.getLogger("app.segmentation")
T = TypeVar("T")
FALLBACK_THRESHOLD = 0.5


@dataclass
class Timings:
    """Milliseconds spent per step of one request."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    async def run(self, step: str, fn: Callable[..., T], *args: Any,
                  limiter: anyio.CapacityLimiter | None = None) -> T:
        """Run ``fn(*args)`` in a worker thread (off the event loop), adding its time to ``step``."""
        t0 = time.perf_counter()
        result = await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
        setattr(self, step, getattr(self, step) + 1000 * (time.perf_counter() - t0))
        return result

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 2) for k, v in vars(self).items()}
        d["total"] = round(sum(vars(self).values()), 2)
        return d


def load_card(settings: Settings, model_sha256: str) -> ModelCard | None:
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
class Upload:
    """One uploaded file, as read (in memory); ``index`` is its place in a batch."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None
    index: int | None = None


@dataclass
class SegmentationService:
    """One ONNX session shared by all requests (ORT sessions are thread-safe); a capacity
    limiter keeps concurrent runs from fighting over the cores."""

    model: OnnxSegmenter
    card: ModelCard | None
    inference_concurrency: int = 1
    image_concurrency: int = 4
    result_options: ResultOptions = field(default_factory=ResultOptions)
    max_pixels: int = 50_000_000
    default_tta: str = "none"
    microbatch_max: int = 32
    microbatch_wait: float = 0.0  # seconds; 0 runs every request alone
    metrics: ServiceMetrics | None = None
    ready: bool = False
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)
    image_limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)
    batcher: MicroBatcher | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "SegmentationService":
        model = OnnxSegmenter(settings.model_path, providers=settings.providers,
                              intra_op_threads=settings.intra_op_threads, inter_op_threads=settings.inter_op_threads,
                              cuda=settings.cuda_options())
        return cls(model=model, card=load_card(settings, model.info.sha256),
                   inference_concurrency=settings.inference_concurrency,
                   image_concurrency=settings.image_concurrency, result_options=settings.result_options(),
                   max_pixels=settings.max_pixels, default_tta=settings.tta,
                   microbatch_max=settings.microbatch_max_batch,
                   microbatch_wait=settings.microbatch_wait_s(model.info.providers[0]))

    @property
    def default_threshold(self) -> float:
        return FALLBACK_THRESHOLD if self.card is None else self.card.default_threshold

    @property
    def region_peak_threshold(self) -> float:
        """The model's region rule (its card); applied at every threshold."""
        return 0.0 if self.card is None else self.card.region_peak_threshold

    def threshold_or_default(self, threshold: float | None) -> float:
        """The request's threshold, or the card's default when it gave none (resolved here only)."""
        return self.default_threshold if threshold is None else threshold

    @property
    def input_size(self) -> int:
        return self.model.info.input_size

    def model_identity(self) -> dict[str, str]:
        info = self.model.info
        return {"name": info.name, "version": info.version, "sha256": info.sha256}

    def model_ref(self) -> ModelRef:
        return ModelRef(**self.model_identity())

    def segment_now(self, images: list[LoadedImage], threshold: float, tta: str | None = None) -> list[Segmentation]:
        """The shared middle in the calling thread (the DICOM node's worker): preprocess, infer, postprocess."""
        batch = preprocess_batch([im.gray for im in images], self.input_size)
        probs = predict_with_tta(self.model, batch, tta or self.default_tta)
        return self._postprocess(probs, images, threshold)

    def _postprocess(self, probs: np.ndarray, images: list[LoadedImage], threshold: float) -> list[Segmentation]:
        """Each image's masks at its own size, under the threshold and the card's region rule."""
        return [postprocess(p, im.width, im.height, threshold, self.region_peak_threshold)
                for p, im in zip(probs, images)]

    def warm_up(self) -> None:
        """One inference so the first request does not pay for graph set-up; then ready."""
        self.model.predict(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))
        self.ready = True

    def _limiter(self) -> anyio.CapacityLimiter:
        if self.limiter is None:  # created lazily, inside the running event loop
            self.limiter = anyio.CapacityLimiter(self.inference_concurrency)
        return self.limiter

    def _full_size(self) -> anyio.CapacityLimiter:
        """Work on images at their own size (decode, postprocess, outputs) holds hundreds of MB per
        large image: at most ``image_concurrency`` requests do it at once, the others wait."""
        if self.image_limiter is None:
            self.image_limiter = anyio.CapacityLimiter(self.image_concurrency)
        return self.image_limiter

    def _batcher(self) -> MicroBatcher:
        if self.batcher is None:
            metrics = self.metrics
            self.batcher = MicroBatcher(lambda batch: self.model.predict(batch), self.microbatch_max, self.microbatch_wait, self._limiter,
                                        on_run=metrics.record_run if metrics else None,
                                        on_wait=metrics.queue_wait.observe if metrics else None)
        return self.batcher

    async def segment(self, images: list[LoadedImage], threshold: float, timings: Timings,
                      tta: str | None = None) -> list[Segmentation]:
        """Run the shared middle of the pipeline off the event loop; one batch for all images."""
        batch = await timings.run("preprocess", preprocess_batch, [im.gray for im in images], self.input_size)
        tta = tta or self.default_tta
        t0 = time.perf_counter()
        probs = tta_merge(await self._batcher().run(tta_expand(batch, tta)), tta)
        timings.inference += 1000 * (time.perf_counter() - t0)  # waiting for company included

        return await timings.run("postprocess", self._postprocess, probs, images, threshold,
                                 limiter=self._full_size())

    async def decode(self, upload: Upload, timings: Timings) -> LoadedImage:
        try:
            return await timings.run("decode", decode_upload, upload.data, self.max_pixels, upload.filename,
                                     upload.content_type, limiter=self._full_size())
        except PipelineError as exc:
            if upload.index is not None:  # in a batch: say which file
                exc.message = f"file {upload.index}: {exc.message}"
            raise

    async def process(self, uploads: list[Upload], spec: OutputSpec, timings: Timings) -> list[Finished]:
        """Decode, segment (one model run) and finish every upload as ``spec`` asks."""
        loaded = []
        for upload in uploads:
            loaded.append(await self.decode(upload, timings))
            spec.check_input(loaded[-1])
        segs = await self.segment(loaded, spec.threshold, timings, spec.tta)
        model = self.model_ref()

        def _finish() -> list[Finished]:
            return [finish(s, im, spec, i, model, self.result_options) for i, (s, im) in enumerate(zip(segs, loaded))]

        return await timings.run("postprocess", _finish, limiter=self._full_size())
