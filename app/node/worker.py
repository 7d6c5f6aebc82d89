"""The node's two workers, each a thread over the spool.

:class:`Segmenter`: incoming/ -> read, then the engine (app.engine: preprocess, infer, postprocess,
and every DICOM result of that one model run, as the HTTP service makes them) -> outgoing/. Results
are written before the received instance is removed; result UIDs are deterministic, so redoing an
item after a crash yields the same objects. An instance already done with the same model and
settings (app.node.done) is not segmented again.

:class:`Deliverer`: outgoing/ -> each destination; a result leaves the spool once every
destination has it. While a destination is down it waits with exponential backoff (tenacity's
wait), up to ``max_wait`` seconds between attempts, for as long as it takes.

Both record what they do in the audit log (app.node.audit) and count it (app.node.metrics).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.uid import SegmentationStorage
from tenacity import RetryCallState, wait_exponential

from app.core.config import setting_default
from app.engine import Engine
from app.node.audit import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    NoAudit,
    Participant,
    destination_of,
    instance,
)
from app.node.done import DoneRecord, done_key
from app.node.metrics import NodeMetrics
from app.node.sender import DestinationDown, Refused
from app.node.spool import Spool
from app.pipeline.dicom.common import ScForm
from app.pipeline.dicom.read import DICOM_MEDIA_TYPE, looks_like_bare_dataset
from app.pipeline.errors import PipelineError
from app.pipeline.judge import JUDGEMENT_CODES

log = logging.getLogger("app.node")


class Sender(Protocol):
    def describe(self) -> str: ...

    def send(self, items: list[bytes]) -> list[Exception | None]: ...


#: A worker with no progress for this long is taken as hung: its mark is no longer renewed, so the
#: health check fails. Longer than any one legitimate step (one image, one delivery attempt of a batch).
STUCK_AFTER_S = 600.0


def mark(spool: Spool, worker: str) -> None:
    try:
        spool.beat(worker)
    except OSError:
        pass  # a spool that cannot be written shows in the work itself


class Heartbeat(threading.Thread):
    """Marks each worker alive in the spool every ``interval`` seconds while its thread runs and has made
    progress within ``stuck_after`` seconds. Separate from the work: a worker busy with one long image or
    delivery stays marked alive (up to ``stuck_after``); a killed process, a dead thread or a hung one
    stop being marked, so ``python -m app.node.health`` fails within its limit (about a minute) of that."""

    def __init__(self, spool: Spool, workers: list[SpoolWorker], interval: float,
                 stuck_after: float = STUCK_AFTER_S):
        super().__init__(name="heartbeat", daemon=True)
        self.spool, self.workers, self.interval, self.stuck_after = spool, workers, interval, stuck_after
        self.stopping = threading.Event()
        self.reported: set[str] = set()  # workers already logged as dead or hung: once each, not every beat

    def stop(self) -> None:
        self.stopping.set()

    def beat_once(self) -> None:
        for worker in self.workers:
            idle = time.monotonic() - worker.progress
            if worker.is_alive() and idle < self.stuck_after:
                mark(self.spool, worker.name)
                self.reported.discard(worker.name)
            elif worker.name not in self.reported:
                self.reported.add(worker.name)
                why = f"no progress for {idle:.0f} s" if worker.is_alive() else "its thread has ended"
                log.error("the %s is no longer marked alive (%s): the node's health check will fail", worker.name, why)

    def run(self) -> None:
        while True:
            self.beat_once()
            if self.stopping.wait(self.interval):
                return


class SpoolWorker(threading.Thread):
    """A thread that drains one spool folder whenever woken, and at least every ``poll`` seconds."""

    def __init__(self, name: str, spool: Spool, poll: float = 5.0):
        super().__init__(name=name, daemon=True)
        self.spool = spool
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.poll = poll
        self.progress = time.monotonic()  # when it last passed a point of progress (:meth:`beat`)

    def wake(self) -> None:
        self.woken.set()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()

    def beat(self) -> None:
        """Alive and making progress, for the health check: at every pass, every item and every slice of a
        wait, so a dead or stuck worker shows. The :class:`Heartbeat` carries the mark on through one long item."""
        self.progress = time.monotonic()
        mark(self.spool, self.name)

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (or until stopped), marking alive every ``poll`` seconds meanwhile: a backoff of a
        minute is no sign of a dead worker."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self.beat()
            self.stopping.wait(min(self.poll, left))

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


@dataclass(frozen=True)
class Header:
    """What the audit log and the done record need of a DICOM file: its UIDs."""

    sop_instance_uid: str | None
    sop_class_uid: str | None
    source_uid: str | None = None  # for a result: the image it was made from

    @classmethod
    def read(cls, data: bytes, result: bool = False) -> Header:
        """Raises whatever pydicom raises for bytes that are no DICOM file. A spool item may be a bare
        dataset (no preamble, no File Meta: put there by hand, from an archive), which pydicom reads
        only when forced."""
        force = looks_like_bare_dataset(data)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=force)
        uid, sop_class = ds.get("SOPInstanceUID"), ds.get("SOPClassUID")
        return cls(str(uid) if uid else None, str(sop_class) if sop_class else None,
                   source_of(ds) if result else None)

    def fields(self, **extra: Any) -> dict[str, Any]:
        return instance(self.sop_instance_uid, self.sop_class_uid, SourceSOPInstanceUID=self.source_uid, **extra)


def source_of(result: pydicom.Dataset) -> str | None:
    """The source image a result references: SEG and SC by Source Image Sequence, the SR by its
    evidence (the item that is not the SEG)."""
    for item in result.get("SourceImageSequence", []):
        return str(item.ReferencedSOPInstanceUID)
    for study in result.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for ref in series.get("ReferencedSOPSequence", []):
                if ref.get("ReferencedSOPClassUID") != SegmentationStorage:
                    return str(ref.ReferencedSOPInstanceUID)
    return None


def header_or_none(data: bytes) -> Header | None:
    try:
        return Header.read(data)
    except Exception:  # noqa: BLE001 - unreadable: the pipeline's own reading says why
        return None


class Segmenter(SpoolWorker):
    def __init__(self, spool: Spool, engine: Engine, outputs: list[str], threshold: float | None,
                 deliverer: Deliverer, done: DoneRecord | None = None, audit=None,
                 metrics: NodeMetrics | None = None, sc_form: ScForm = ScForm()):
        """``sc_form``: the smaller Secondary Capture the site chose (COVIDSEG_NODE_SC_MAX_SIZE, jpeg-baseline)."""
        super().__init__("segmenter", spool)
        # threshold None: the card's, as the engine resolves it
        self.engine, self.outputs, self.threshold = engine, outputs, engine.threshold(threshold)
        self.sc_form = sc_form
        self.deliverer, self.done = deliverer, done
        self.audit, self.metrics = audit or NoAudit(), metrics or NodeMetrics()

    def drain(self) -> None:
        for path in self.spool.items(self.spool.incoming):
            if self.stopping.is_set():
                return
            self.beat()
            self.segment(path)

    def segment(self, path: Path) -> None:
        data = path.read_bytes()
        source = header_or_none(data)
        key = self.key_of(source)
        if key and self.skip_if_done(path, key, source):
            return
        try:
            results = self.results_of(data)
        except PipelineError as exc:
            (self.refuse if exc.code in JUDGEMENT_CODES else self.set_aside)(path, exc, source)
            return
        except Exception as exc:  # noqa: BLE001 - one bad image must not hold up the queue behind it
            self.set_aside(path, exc, source)
            return
        made = {kind: Header.read(result, result=True) for kind, result in results.items()}
        for kind, result in results.items():
            self.spool.write(self.spool.outgoing, f"{path.stem}-{kind}.dcm", result)
        if key:  # after the results are on disk: a crash before this redoes the item, never loses it
            self.done.add(key, [h.sop_instance_uid for h in made.values() if h.sop_instance_uid])
        for kind, header in made.items():
            self.audit.record("result-made", description=f"{kind} made and queued for delivery",
                              **header.fields(ResultKind=kind))
        path.unlink()
        self.metrics.segmented.inc()
        log.info("segmented an instance: %d result(s) queued", len(results))
        self.deliverer.wake()

    def key_of(self, source: Header | None) -> str | None:
        """The done record's key for this instance with this node's model and settings."""
        if self.done is None or source is None or not source.sop_instance_uid:
            return None
        return done_key(source.sop_instance_uid, self.engine.model.info.sha256, self.threshold,
                        self.engine.tta(None), self.outputs,
                        self.sc_form.names() if "sc" in self.outputs else ())

    def skip_if_done(self, path: Path, key: str, source: Header) -> bool:
        """True (and the received copy removed) when this instance's results were made already."""
        results = self.done.results_of(key)
        if results is None:
            return False
        path.unlink()
        self.audit.record("instance-already-done", description="already segmented with this model and settings: "
                          "not segmented or delivered again", **source.fields(ResultSOPInstanceUIDs=results))
        self.metrics.already_done.inc()
        log.info("skipped an instance already segmented with this model and settings")
        return True

    def refuse(self, path: Path, exc: PipelineError, source: Header | None) -> None:
        """An image the model cannot judge (the engine's judge step): not segmented, nothing sent, and not
        kept (no administrator can make it readable); the audit record says what was measured."""
        log.warning("an instance was not segmented: %s (the model cannot judge it)", exc.code)
        path.unlink()
        self.audit.record("instance-not-judged", MINOR_FAILURE, f"not segmented ({exc.code}): {exc.message}",
                          **(source.fields() if source else {}))
        self.metrics.not_judged.labels(exc.code).inc()

    def set_aside(self, path: Path, exc: Exception, source: Header | None) -> None:
        reason = exc.message if isinstance(exc, PipelineError) else f"{type(exc).__name__}"
        # the reason file (owner-only) has the message; it may quote the file's values, the log does not
        code = exc.code if isinstance(exc, PipelineError) else type(exc).__name__
        log.warning("an instance could not be segmented (%s); kept in %s", code, self.spool.failed)
        self.spool.set_aside(path, reason)
        self.audit.record("instance-not-segmented", SERIOUS_FAILURE, f"cannot be segmented ({code}); kept in failed/",
                          **(source.fields() if source else {}))
        self.metrics.failed.labels("segment").inc()

    def results_of(self, data: bytes) -> dict[str, bytes]:
        """Every result kind of this instance, from one model run. The selection rules judged it when it was
        received (app.node.scp, from its header): read here without judging again, and as DICOM whatever
        its first bytes (a spool item is one)."""
        loaded = self.engine.read(data, content_type=DICOM_MEDIA_TYPE, selection=False)
        results = self.engine.results(self.engine.segment([loaded], self.threshold)[0], loaded)
        if not self.sc_form.is_full:  # the SC made smaller here, so the audit log names the object delivered
            results = dataclasses.replace(results, options=dataclasses.replace(results.options, sc_form=self.sc_form))
        return {kind: results.dicom(kind) for kind in self.outputs}


def unreadable(data: bytes) -> str | None:
    """Why ``data`` is no DICOM file a destination could take (None when it is one): such an item,
    cut short by a disk error say, is set aside rather than stopping every result queued behind it."""
    try:
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, no destination can be sent it
        return f"not a readable DICOM file ({type(exc).__name__})"
    return None


class Deliverer(SpoolWorker):
    def __init__(self, spool: Spool, senders: list[Sender], max_wait: float = setting_default("node_retry_max_wait"),
                 batch: int = 32,
                 node: Participant | None = None, done: DoneRecord | None = None, audit=None,
                 metrics: NodeMetrics | None = None):
        super().__init__("deliverer", spool, poll=5.0)
        self.senders, self.batch = senders, batch
        self.node, self.done = node, done  # node: the calling AE, as the audit log names it
        self.audit, self.metrics = audit or NoAudit(), metrics or NodeMetrics()
        # 0.5 s, doubling, never over max_wait (also when max_wait is set under 0.5 s)
        self.backoff = wait_exponential(multiplier=0.5, min=min(0.5, max_wait), max=max_wait)
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
                self.pause(wait)

    def _state(self) -> RetryCallState:
        """tenacity's waits read the attempt number off a call state."""
        state = RetryCallState(None, None, (), {})
        state.attempt_number = self.failures
        return state

    def deliver(self, items: list[Path]) -> None:
        """Send to every destination; an item leaves the spool once all have it (or refused it)."""
        payloads: dict[Path, bytes] = {}
        headers: dict[Path, Header] = {}
        refusals: dict[Path, str] = {}
        for path in items:
            data = path.read_bytes()
            problem = unreadable(data)
            if problem:
                refusals[path] = problem
                self.audit.record("result-not-delivered", SERIOUS_FAILURE, f"{problem}; kept in failed/",
                                  source=self.node)
            else:
                payloads[path], headers[path] = data, Header.read(data, result=True)
        for sender in self.senders if payloads else []:
            for path, outcome in zip(payloads, self.send(sender, list(payloads.values()), list(headers.values()))):
                if isinstance(outcome, Refused):
                    refusals[path] = f"{sender.describe()}: {outcome}"
        for path in items:
            if path in refusals:
                log.warning("a result cannot be delivered (%s); kept in %s", refusals[path], self.spool.failed)
                self.spool.set_aside(path, refusals[path])
                self.metrics.failed.labels("deliver").inc()
                header = headers.get(path)
                if self.done is not None and header and header.sop_instance_uid:
                    self.done.forget_result(header.sop_instance_uid)  # sent again, its instance is made again
            else:
                path.unlink()
                self.metrics.observe_delivery(path)
        log.info("delivered %d result(s)", len(items) - len(refusals))

    def send(self, sender: Sender, payloads: list[bytes], headers: list[Header]) -> list[Exception | None]:
        """One sender's attempt, recorded: begun, then each result delivered or refused, or the
        destination unreachable (then raised on, to be retried)."""
        where, what = destination_of(sender), sender.describe()
        parties = {"source": self.node, "destination": where}
        self.audit.record("delivery-started", description=what, NumberOfInstances=len(payloads), **parties)
        try:
            outcomes = sender.send(payloads)
        except DestinationDown as exc:
            self.audit.record("destination-unreachable", MINOR_FAILURE, f"{what}: {exc}; retried later",
                              NumberOfInstances=len(payloads), **parties)
            self.metrics.unreachable.labels(what).inc()
            raise
        for header, outcome in zip(headers, outcomes):
            if isinstance(outcome, Refused):
                self.audit.record("result-not-delivered", SERIOUS_FAILURE, f"{what}: {outcome}; kept in failed/",
                                  **parties, **header.fields())
            else:
                self.audit.record("result-delivered", description=what, **parties, **header.fields())
                self.metrics.delivered.labels(what).inc()
        return outcomes
