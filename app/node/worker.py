"""The node's two workers, each a thread over the spool.

:class:`Segmenter`: incoming/ -> read, preprocess, infer, postprocess, write (the same units as
the HTTP service) -> outgoing/. Results are written before the received instance is removed;
result UIDs are deterministic, so redoing an item after a crash yields the same objects.

:class:`Deliverer`: outgoing/ -> each destination; a result leaves the spool once every
destination has it. While a destination is down it waits with exponential backoff (tenacity's
wait), up to ``max_wait`` seconds between attempts, for as long as it takes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

from tenacity import RetryCallState, wait_exponential

from app.node.sender import DestinationDown, Refused
from app.node.spool import Spool
from app.pipeline.dicom.read import load_dicom_bytes
from app.pipeline.errors import PipelineError
from app.services.outputs import dicom_of
from app.services.segmentation import SegmentationService

log = logging.getLogger("app.node")


class Sender(Protocol):
    def describe(self) -> str: ...

    def send(self, items: list[bytes]) -> list[Exception | None]: ...


class SpoolWorker(threading.Thread):
    """A thread that drains one spool folder whenever woken, and at least every ``poll`` seconds."""

    def __init__(self, name: str, spool: Spool, poll: float = 5.0):
        super().__init__(name=name, daemon=True)
        self.spool = spool
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.poll = poll

    def wake(self) -> None:
        self.woken.set()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()

    def beat(self) -> None:
        """Alive, for the health check: at every pass and every item, so a dead or stuck worker shows."""
        try:
            self.spool.beat(self.name)
        except OSError:
            pass  # a spool that cannot be written shows in the work itself

    def run(self) -> None:
        while not self.stopping.is_set():
            self.beat()
            self.woken.clear()
            try:
                self.drain()
            except Exception as exc:  # noqa: BLE001 - a worker that dies would leave the spool unserved
                log.error("%s stopped a pass (%s); trying again in %.0f s", self.name, type(exc).__name__, self.poll)
            self.woken.wait(self.poll)

    def drain(self) -> None:
        raise NotImplementedError


class Segmenter(SpoolWorker):
    def __init__(self, spool: Spool, service: SegmentationService, outputs: list[str], threshold: float,
                 max_pixels: int, deliverer: "Deliverer"):
        super().__init__("segmenter", spool)
        self.service, self.outputs, self.threshold = service, outputs, threshold
        self.max_pixels, self.deliverer = max_pixels, deliverer

    def drain(self) -> None:
        for path in self.spool.items(self.spool.incoming):
            if self.stopping.is_set():
                return
            self.beat()
            self.segment(path)

    def segment(self, path: Path) -> None:
        try:
            results = self.results_of(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - one bad image must not hold up the queue behind it
            reason = exc.message if isinstance(exc, PipelineError) else f"{type(exc).__name__}"
            # the reason file (owner-only) has the message; it may quote the file's values, the log does not
            code = exc.code if isinstance(exc, PipelineError) else type(exc).__name__
            log.warning("an instance could not be segmented (%s); kept in %s", code, self.spool.failed)
            self.spool.set_aside(path, reason)
            return
        for kind, data in results.items():
            self.spool.write(self.spool.outgoing, f"{path.stem}-{kind}.dcm", data)
        path.unlink()
        log.info("segmented an instance: %d result(s) queued", len(results))
        self.deliverer.wake()

    def results_of(self, data: bytes) -> dict[str, bytes]:
        loaded = load_dicom_bytes(data, self.max_pixels)
        seg = self.service.segment_now([loaded], self.threshold)[0]
        model, options = self.service.model_ref(), self.service.result_options
        return {kind: dicom_of(kind, seg, loaded, model, options) for kind in self.outputs}


class Deliverer(SpoolWorker):
    def __init__(self, spool: Spool, senders: list[Sender], max_wait: float = 60.0, batch: int = 32):
        super().__init__("deliverer", spool, poll=5.0)
        self.senders, self.batch = senders, batch
        self.backoff = wait_exponential(multiplier=0.5, min=0.5, max=max_wait)
        self.failures = 0

    def drain(self) -> None:
        while not self.stopping.is_set():
            self.beat()
            items = self.spool.items(self.spool.outgoing)[: self.batch]
            if not items:
                return
            try:
                self.deliver(items)
                self.failures = 0
            except DestinationDown as exc:
                self.failures += 1
                wait = self.backoff(self._state())
                log.warning("destination unreachable (%s); %d result(s) queued, next attempt in %.1f s",
                            exc, len(self.spool.items(self.spool.outgoing)), wait)
                self.stopping.wait(wait)

    def _state(self) -> RetryCallState:
        """tenacity's waits read the attempt number off a call state."""
        state = RetryCallState(None, None, (), {})
        state.attempt_number = self.failures
        return state

    def deliver(self, items: list[Path]) -> None:
        """Send to every destination; an item leaves the spool once all have it (or refused it)."""
        payloads = [p.read_bytes() for p in items]
        refusals: dict[Path, str] = {}
        for sender in self.senders:
            for path, outcome in zip(items, sender.send(payloads)):
                if isinstance(outcome, Refused):
                    refusals[path] = f"{sender.describe()}: {outcome}"
        for path in items:
            if path in refusals:
                log.warning("a result was refused (%s); kept in %s", refusals[path], self.spool.failed)
                self.spool.set_aside(path, refusals[path])
            else:
                path.unlink()
        log.info("delivered %d result(s)", len(items) - len(refusals))
