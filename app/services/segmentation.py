"""The HTTP service around the engine: the engine's steps for one request (one image or a batch), with
the limiters and the micro-batcher that share one model between concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from dataclasses import asdict, dataclass, field

import anyio
import numpy as np

from app.card import ModelCard
from app.core import allocator
from app.core.config import Settings, setting_default
from app.core.metrics import ServiceMetrics
from app.engine import Engine
from app.pipeline.dicom.common import ModelRef
from app.pipeline.errors import PipelineError
from app.pipeline.infer import ModelOutputs, OnnxSegmenter
from app.pipeline.dicom.read import looks_like_dicom
from app.pipeline.inputs import ParsedInput, declared_pixels
from app.pipeline.load import LoadedImage
from app.services.admission import Admission, WorkEstimate
from app.services.batcher import MicroBatcher, run_in_chunks
from app.services.outputs import Finished, OutputSpec, finish

T = TypeVar("T")


@dataclass
class Timings:
    """Milliseconds spent per step of one request."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    judge: float = 0.0
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


@dataclass(frozen=True)
class Upload:
    """One uploaded file, as read (in memory); ``index`` is its place in a batch."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None
    index: int | None = None


@contextmanager
def naming_the_file(upload: Upload) -> Iterator[None]:
    """A refusal of a file in a batch says which file it is."""
    try:
        yield
    except PipelineError as exc:
        if upload.index is not None:
            exc.message = f"file {upload.index}: {exc.message}"
        raise


@dataclass
class SegmentationService:
    """The engine (one ONNX session shared by all requests: ORT sessions are thread-safe) behind limiters:
    a capacity limiter keeps concurrent runs from fighting over the cores, the admission bounds the memory of
    requests working on full-size images at once (and sheds load); concurrent requests may share model runs
    (micro-batching)."""

    engine: Engine
    inference_concurrency: int = setting_default("inference_concurrency")
    image_concurrency: int = setting_default("image_concurrency")
    work_memory_mb: float = setting_default("work_memory_mb")
    max_queue_wait_s: float = setting_default("max_queue_wait_s")
    microbatch_max: int = setting_default("microbatch_max_batch")
    microbatch_wait: float = 0.0  # seconds; 0 runs every request alone
    metrics: ServiceMetrics | None = None
    ready: bool = False
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)
    admission: Admission | None = field(default=None, repr=False)
    batcher: MicroBatcher | None = field(default=None, repr=False)
    model_slots: threading.Semaphore | None = field(default=None, repr=False)  # runs at once, without a batcher

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmentationService:
        engine = Engine.from_settings(settings)
        return cls(engine=engine, inference_concurrency=settings.inference_concurrency,
                   image_concurrency=settings.image_concurrency, work_memory_mb=settings.work_memory_mb,
                   max_queue_wait_s=settings.max_queue_wait_s, microbatch_max=settings.microbatch_max_batch,
                   microbatch_wait=settings.microbatch_wait_s(engine.model.info.providers[0]))

    # The engine's, for the routes and the tests that read them off the service.
    @property
    def model(self) -> OnnxSegmenter:
        return self.engine.model

    @property
    def card(self) -> ModelCard | None:
        return self.engine.card

    @property
    def default_threshold(self) -> float:
        return self.engine.default_threshold

    @property
    def max_pixels(self) -> int:
        return self.engine.max_pixels

    def model_ref(self) -> ModelRef:
        return self.engine.model_ref()

    def model_identity(self) -> dict[str, str]:
        return asdict(self.engine.model_ref())

    def warm_up(self) -> None:
        """One inference so the first request does not pay for graph set-up; then ready."""
        self.engine.warm_up()
        self.ready = True

    def _limiter(self) -> anyio.CapacityLimiter:
        if self.limiter is None:  # created lazily, inside the running event loop
            self.limiter = anyio.CapacityLimiter(self.inference_concurrency)
        return self.limiter

    def _admission(self) -> Admission:
        """Work on images at their own size (decode, postprocess, outputs) holds hundreds of MB per large image:
        requests are admitted to it by their images' estimated memory, at most ``image_concurrency`` at once."""
        if self.admission is None:
            # Idle after work on full-size images: what the allocator holds free goes back to the system.
            self.admission = Admission(self.work_memory_mb, self.image_concurrency, self.max_queue_wait_s,
                                       on_idle=trim_in_background,
                                       on_wait=self.metrics.admission_wait.observe if self.metrics else None)
        return self.admission

    def stop_admitting(self) -> None:
        """Shutting down: the queued requests are answered 503 now, new ones at once; those in work finish."""
        self._admission().close()

    def _batcher(self) -> MicroBatcher:
        if self.batcher is None:
            metrics = self.metrics
            self.batcher = MicroBatcher(lambda batch: self.model.run(batch), self.microbatch_max, self.microbatch_wait, self._limiter,
                                        on_run=metrics.record_run if metrics else None,
                                        on_wait=metrics.queue_wait.observe if metrics else None)
        return self.batcher

    def read_headers(self, uploads: list[Upload], spec: OutputSpec, timings: Timings) -> list[ParsedInput]:
        """The engine's load and select steps for every upload: a DICOM the rules leave out is refused from its
        header, before its pixels cost a decoding (or a place in the admission); in a batch, the error says which
        file."""
        parsed = []
        with timings.step("decode"):
            for upload in uploads:
                with naming_the_file(upload):
                    parsed.append(self.engine.load(upload.data, upload.filename, upload.content_type))
                self.check_selected(parsed[-1], upload, spec)
        return parsed

    def estimate(self, parsed: list[ParsedInput], uploads: list[Upload]) -> WorkEstimate:
        """The request's memory, from its images' declared sizes."""
        sizes = []
        for one, upload in zip(parsed, uploads):
            with naming_the_file(upload):
                sizes.append(declared_pixels(one))
        return WorkEstimate.of(sizes)

    def check_selected(self, parsed: ParsedInput, upload: Upload, spec: OutputSpec) -> None:
        """The engine's select step (a DICOM that the node and the bridge would leave out, a knee or a lateral
        view, is refused), unless the request said ``selection=ignore``; the refusal says how to get past it."""
        if not spec.apply_selection:
            return
        with naming_the_file(upload):
            try:
                self.engine.select(parsed)
            except PipelineError as exc:
                exc.message = f"{exc.message}; selection=ignore segments it anyway (research use)"
                raise

    def prepare(self, parsed: list[ParsedInput], uploads: list[Upload], spec: OutputSpec,
                timings: Timings) -> tuple[list[LoadedImage], np.ndarray]:
        """Decode and check every upload, then the model's input for all of them (with its mirrors for ``flip``)."""
        loaded = []
        for one, upload in zip(parsed, uploads):
            with timings.step("decode"), naming_the_file(upload):
                loaded.append(self.engine.decode(one))
            spec.check_input(loaded[-1])
        with timings.step("preprocess"):
            batch = self.engine.expand(self.engine.preprocess(loaded), spec.tta)
        return loaded, batch

    def complete(self, outputs: ModelOutputs, batch: np.ndarray, uploads: list[Upload], loaded: list[LoadedImage],
                 spec: OutputSpec, timings: Timings) -> list[Finished]:
        """From the model's outputs to every image's finished answer: the judgement (a refusal for an image the
        model cannot read: no result is made), masks, measurements, PNG or DICOM."""
        with timings.step("judge"):
            outputs = self.engine.merge(outputs, spec.tta)
            judgements = self.engine.judge(batch[:len(loaded)], outputs, loaded, run=self._negative_run(),
                                           until_refused=True)
        for upload, judgement in zip(uploads, judgements):
            if judgement.refusal is not None:
                with naming_the_file(upload):
                    raise judgement.refusal
        with timings.step("postprocess"):
            segs = self.engine.postprocess(outputs.probabilities, loaded, spec.threshold, judgements, spec.tta)
            return [finish(self.engine.results(s, im), spec, i) for i, (s, im) in enumerate(zip(segs, loaded))]

    def _negative_run(self) -> Callable[[np.ndarray], ModelOutputs]:
        """How the judge step runs the model on a refused image's negative, from a worker thread: through the
        batcher when there is one (its limiter is the one that bounds model runs then), else in a model slot."""
        if self.microbatch_wait <= 0:
            return self.run_model
        return lambda batch: anyio.from_thread.run(self._batcher().run, batch)

    def _model_slots(self) -> threading.Semaphore:
        if self.model_slots is None:  # created on the event loop, before any worker thread needs it
            self.model_slots = threading.BoundedSemaphore(self.inference_concurrency)
        return self.model_slots

    def run_model(self, batch: np.ndarray) -> ModelOutputs:
        """The model's outputs in the calling thread, in runs of at most ``microbatch_max`` images (as the
        batcher would), each once one of the ``inference_concurrency`` slots is free."""
        return run_in_chunks(self._one_run, batch, self.microbatch_max)

    def _one_run(self, batch: np.ndarray) -> ModelOutputs:
        with self._model_slots():
            t0 = time.perf_counter()
            outputs = self.model.run(batch)
            seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.record_run(len(batch), seconds)
        return outputs

    def process_alone(self, parsed: list[ParsedInput], uploads: list[Upload], spec: OutputSpec,
                      timings: Timings) -> list[Finished]:
        """The admitted request in the calling worker thread: prepare, model run, complete."""
        loaded, batch = self.prepare(parsed, uploads, spec, timings)
        t0 = time.perf_counter()
        outputs = self.run_model(batch)
        timings.inference += 1000 * (time.perf_counter() - t0)  # waiting for a free slot included
        return self.complete(outputs, batch, uploads, loaded, spec, timings)

    async def process(self, uploads: list[Upload], spec: OutputSpec, timings: Timings) -> list[Finished]:
        """Read the headers, wait for admission, then decode, segment (one model run) and finish every upload as
        ``spec`` asks.

        Each hand-off between the event loop and a worker thread costs two thread wake-ups, and on a busy
        2-core machine those were most of a request's overhead (bench/RESULTS.md). So PNG and JPEG headers are
        read on the event loop (Pillow reads a header only), DICOM headers (pydicom parses the whole dataset)
        in a worker thread; without micro-batching (the CPU default) the admitted request then takes one
        hand-off, model run included. With micro-batching the model run is the batcher's, on the event loop,
        between a hand-off to prepare and one to complete."""
        self._model_slots()  # on the event loop: the judge step's second run takes a slot from a worker thread
        if any(looks_like_dicom(u.data, u.filename, u.content_type) for u in uploads):
            parsed = await anyio.to_thread.run_sync(self.read_headers, uploads, spec, timings)
        else:
            parsed = self.read_headers(uploads, spec, timings)
        async with self._admission().admitted(self.estimate(parsed, uploads)):
            # Once admitted, the work runs to its end even if the request is cancelled (its client left): its
            # thread cannot be stopped, and the admission must count its memory until it lets go of it.
            return await finished_even_if_cancelled(self.work(parsed, uploads, spec, timings))

    async def work(self, parsed: list[ParsedInput], uploads: list[Upload], spec: OutputSpec,
                   timings: Timings) -> list[Finished]:
        """The admitted request: in one worker thread, or around the batcher's model run."""
        if self.microbatch_wait <= 0:
            return await anyio.to_thread.run_sync(self.process_alone, parsed, uploads, spec, timings)
        loaded, batch = await anyio.to_thread.run_sync(self.prepare, parsed, uploads, spec, timings)
        t0 = time.perf_counter()
        outputs = await self._batcher().run(batch)
        timings.inference += 1000 * (time.perf_counter() - t0)  # waiting for company included
        return await anyio.to_thread.run_sync(self.complete, outputs, batch, uploads, loaded, spec, timings)


async def finished_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """``await work``, except that a cancellation waits for ``work`` to end (its result dropped) before it goes on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


def trim_in_background() -> None:
    """The allocator's trim in a worker thread: it can take milliseconds on a large heap, not the event loop's."""
    asyncio.get_running_loop().run_in_executor(None, allocator.trim)
