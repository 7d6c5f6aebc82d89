"""The bridge loop: for each CR/DX instance of the PACS not yet done, check the selection rules,
then for each result kind (SEG, SC, SR) ask the PACS whether it already holds that result of
this model version and threshold; only if not, ask the service for it and store it back.

Result UIDs are deterministic (:mod:`app.pipeline.dicom.common`), so "already holds it" is one
look-up by SOP Instance UID, and a lost state file adds nothing to the PACS.
Transient failures (service or PACS unreachable, 5xx, 429) are retried with exponential
backoff (tenacity); when retries run out the instance and all after it stay *pending* for the
next run. An instance the service refuses (4xx) is recorded as failed and skipped. State is
written after each step, so Ctrl-C leaves a consistent record.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pydicom
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.pacs.instance import Instance, Pacs
from app.pacs.service_client import ServiceClient, ServiceRefused, is_transient
from app.pacs.state import BridgeState
from app.pipeline.dicom.common import ModelRef, ResultIdentity
from app.pipeline.select import SelectionRules

log = logging.getLogger("app.pacs")


def describe_failure(exc: BaseException | None) -> str:
    """What went wrong, without the URL: DICOMweb paths carry study, series and instance UIDs."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.method} answered {exc.response.status_code}"
    return type(exc).__name__


@dataclass
class Summary:
    found: int = 0
    already_done: int = 0
    processed: list[str] = field(default_factory=list)
    already_in_pacs: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    interrupted: bool = False
    stop_reason: str | None = None

    def table(self) -> str:
        rows = [("CR/DX instances found", self.found), ("already processed", self.already_done),
                ("processed now", len(self.processed)), ("results already in the PACS", self.already_in_pacs),
                ("skipped (selection rules)", len(self.skipped)), ("failed (skipped)", len(self.failed)),
                ("pending (retry next run)", len(self.pending))]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {count:>6}" for name, count in rows]
        if self.stop_reason:
            lines.append(f"stopped early: {self.stop_reason}")
        return "\n".join(lines)


@dataclass
class Job:
    """What every instance of one run is processed with."""

    model: ModelRef
    threshold: float
    outputs: list[str]
    rules: SelectionRules


class Bridge:
    def __init__(self, pacs: Pacs, service: ServiceClient, state: BridgeState, job: Job,
                 retries: int = 5, retry_wait: float = 1.0):
        self.pacs, self.service, self.state, self.job = pacs, service, state, job
        self.retrying = dict(stop=stop_after_attempt(retries), reraise=False,
                             wait=wait_exponential(multiplier=retry_wait, max=30),
                             retry=retry_if_exception(is_transient))

    def retry(self, fn: Callable, *args):
        """``fn(*args)`` with backoff on transient failures (RetryError when they last)."""
        for attempt in Retrying(**self.retrying):
            with attempt:
                return fn(*args)

    def process(self, instance: Instance, summary: Summary) -> None:
        """The results of one instance that the PACS does not hold yet."""
        dicom = self.retry(self.pacs.download, instance)
        header = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True, force=True)
        reason = self.job.rules.reason_to_skip(header)
        if reason:
            log.info("skipped an instance: %s", reason)
            self.state.mark_skipped(instance.sop_instance_uid, reason)
            summary.skipped[instance.sop_instance_uid] = reason
            return
        done = self.state.stored(instance.sop_instance_uid)
        for kind in self.job.outputs:
            if kind in done:
                continue
            uid = ResultIdentity.of(kind, header, self.job.model, self.job.threshold).sop_instance_uid
            if self.retry(self.pacs.has_instance, instance.study_instance_uid, uid):
                summary.already_in_pacs += 1
            else:
                self.retry(self.pacs.upload, self.retry(self.service.segment, dicom, kind, self.job.threshold))
            self.state.record_output(instance.sop_instance_uid, kind, uid)
        self.state.mark_processed(instance.sop_instance_uid)
        summary.processed.append(instance.sop_instance_uid)

    def run(self, instances: list[Instance], progress: bool = True) -> Summary:
        from tqdm import tqdm

        summary = Summary(found=len(instances))
        todo = [i for i in instances if not self.state.is_done(i.sop_instance_uid)]
        summary.already_done = len(instances) - len(todo)
        bar = tqdm(todo, desc="segmenting", unit="image", disable=not progress)
        index = 0
        try:
            for index, instance in enumerate(bar):
                try:
                    self.process(instance, summary)
                except ServiceRefused as exc:
                    log.warning("an instance was refused by the service (%d %s)", exc.status, exc.code)
                    log.debug("refused: SOP Instance UID %s: %s", instance.sop_instance_uid, exc.detail)
                    self.state.mark_failed(instance.sop_instance_uid, str(exc))
                    summary.failed[instance.sop_instance_uid] = str(exc)
                except (RetryError, httpx.HTTPError) as exc:
                    cause = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
                    summary.stop_reason = describe_failure(cause)
                    log.error("giving up for now: %s", summary.stop_reason)
                    summary.pending = [i.sop_instance_uid for i in todo[index:]]
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.stop_reason = "interrupted"
            summary.pending = [i.sop_instance_uid for i in todo[index:] if not self.state.is_done(i.sop_instance_uid)]
        finally:
            bar.close()
        return summary
