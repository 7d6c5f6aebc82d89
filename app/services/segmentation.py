"""The loaded model and its card, and the shared middle of every input path:
preprocess -> infer -> postprocess, for one image or a batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import numpy as np

from app.card import CardError, ModelCard
from app.core.config import Settings, setting_default
from app.pipeline.dicom.common import ModelRef, ResultOptions
from app.core.metrics import ServiceMetrics
from app.pipeline.errors import PipelineError
from app.pipeline.inputs import decode_upload
from app.services.outputs import Finished, OutputSpec, finish
from app.pipeline.infer import ModelLoadError, OnnxSegmenter, predict_with_tta, tta_expand, tta_merge
from app.services.batcher import MicroBatcher, run_in_chunks
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation, postprocess
from app.pipeline.preprocess import preprocess_batch
from app.pipeline.select import SelectionRules, check_selected

log = logging.getLogger("app.segmentation")
FALLBACK_THRESHOLD = 0.5


@dataclass
class Timings:
    """Milliseconds spent per step of one request."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    @contextmanager
    def step(self, step: str) -> Iterator[None]:
        """Add the time of the ``with`` block to ``step``, in whichever thread runs it."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, step, getattr(self, step) + 1000 * (time.perf_counter() - t0))

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
    inference_concurrency: int = setting_default("inference_concurrency")
    image_concurrency: int = setting_default("image_concurrency")
    result_options: ResultOptions = field(default_factory=ResultOptions)
    selection: SelectionRules = field(default_factory=SelectionRules)  # the node's and the bridge's rules
    max_pixels: int = setting_default("max_pixels")
    default_tta: str = setting_default("tta")
    microbatch_max: int = setting_default("microbatch_max_batch")
    microbatch_wait: float = 0.0  # seconds; 0 runs every request alone
    metrics: ServiceMetrics | None = None
    ready: bool = False
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)
    image_limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)
    batcher: MicroBatcher | None = field(default=None, repr=False)
    model_slots: threading.Semaphore | None = field(default=None, repr=False)  # runs at once, without a batcher

    @classmethod
    def from_settings(cls, settings: Settings) -> "SegmentationService":
        model = OnnxSegmenter(settings.model_path, providers=settings.providers,
                              intra_op_threads=settings.intra_op_threads, inter_op_threads=settings.inter_op_threads,
                              cuda=settings.cuda_options())
        return cls(model=model, card=load_card(settings, model.info.sha256),
                   inference_concurrency=settings.inference_concurrency,
                   image_concurrency=settings.image_concurrency, result_options=settings.result_options(),
                   selection=SelectionRules.from_settings(settings),
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

    def decode(self, upload: Upload) -> LoadedImage:
        try:
            return decode_upload(upload.data, self.max_pixels, upload.filename, upload.content_type)
        except PipelineError as exc:
            if upload.index is not None:  # in a batch: say which file
                exc.message = f"file {upload.index}: {exc.message}"
            raise

    def check_selected(self, loaded: LoadedImage, upload: Upload, spec: OutputSpec) -> None:
        """Refuse a DICOM that the node and the bridge would leave out (a knee, a lateral view), unless the
        request said ``selection=ignore``; PNG and JPEG carry no such attributes and pass."""
        if loaded.dicom is None or not spec.apply_selection:
            return
        try:
            check_selected(self.selection, loaded.dicom.dataset)
        except PipelineError as exc:
            which = "" if upload.index is None else f"file {upload.index}: "
            exc.message = f"{which}{exc.message}; selection=ignore segments it anyway (research use)"
            raise

    def prepare(self, uploads: list[Upload], spec: OutputSpec,
                timings: Timings) -> tuple[list[LoadedImage], np.ndarray]:
        """Decode and check every upload, then the model's input for all of them (with its mirrors for ``flip``)."""
        loaded = []
        for upload in uploads:
            with timings.step("decode"):
                loaded.append(self.decode(upload))
            spec.check_input(loaded[-1])
            self.check_selected(loaded[-1], upload, spec)
        with timings.step("preprocess"):
            batch = tta_expand(preprocess_batch([im.gray for im in loaded], self.input_size), self.tta_of(spec))
        return loaded, batch

    def complete(self, outputs: np.ndarray, loaded: list[LoadedImage], spec: OutputSpec,
                 timings: Timings) -> list[Finished]:
        """From the model's outputs to every image's finished answer: masks, measurements, PNG or DICOM."""
        with timings.step("postprocess"):
            segs = self._postprocess(tta_merge(outputs, self.tta_of(spec)), loaded, spec.threshold)
            model = self.model_ref()
            return [finish(s, im, spec, i, model, self.result_options) for i, (s, im) in enumerate(zip(segs, loaded))]

    def tta_of(self, spec: OutputSpec) -> str:
        return spec.tta or self.default_tta

    def _model_slots(self) -> threading.Semaphore:
        if self.model_slots is None:  # created on the event loop, before any worker thread needs it
            self.model_slots = threading.BoundedSemaphore(self.inference_concurrency)
        return self.model_slots

    def run_model(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs in the calling thread, in runs of at most ``microbatch_max`` images (as the
        batcher would), each once one of the ``inference_concurrency`` slots is free."""
        return run_in_chunks(self._one_run, batch, self.microbatch_max)

    def _one_run(self, batch: np.ndarray) -> np.ndarray:
        with self._model_slots():
            t0 = time.perf_counter()
            outputs = self.model.predict(batch)
            seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.record_run(len(batch), seconds)
        return outputs

    def process_alone(self, uploads: list[Upload], spec: OutputSpec, timings: Timings) -> list[Finished]:
        """The whole request in the calling worker thread: prepare, model run, complete."""
        loaded, batch = self.prepare(uploads, spec, timings)
        t0 = time.perf_counter()
        outputs = self.run_model(batch)
        timings.inference += 1000 * (time.perf_counter() - t0)  # waiting for a free slot included
        return self.complete(outputs, loaded, spec, timings)

    async def process(self, uploads: list[Upload], spec: OutputSpec, timings: Timings) -> list[Finished]:
        """Decode, segment (one model run) and finish every upload as ``spec`` asks.

        Each hand-off between the event loop and a worker thread costs two thread wake-ups, and on a busy
        2-core machine those were most of a request's overhead (bench/RESULTS.md). Without micro-batching
        (the CPU default) the request therefore takes one hand-off: it holds its full-size slot from decode
        to the finished answer, model run included. With micro-batching the model run is the batcher's, on
        the event loop, between a hand-off to prepare and one to complete."""
        full_size = self._full_size()
        if self.microbatch_wait <= 0:
            self._model_slots()
            return await anyio.to_thread.run_sync(self.process_alone, uploads, spec, timings, limiter=full_size)
        loaded, batch = await anyio.to_thread.run_sync(self.prepare, uploads, spec, timings, limiter=full_size)
        t0 = time.perf_counter()
        outputs = await self._batcher().run(batch)
        timings.inference += 1000 * (time.perf_counter() - t0)  # waiting for company included
        return await anyio.to_thread.run_sync(self.complete, outputs, loaded, spec, timings, limiter=full_size)
