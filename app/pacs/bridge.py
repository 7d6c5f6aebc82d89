"""The bridge loop: for each instance of the selected modalities in the PACS not yet done, check the
selection rules, then for each result kind (SEG, SC, SR) ask the PACS whether it already holds that result of
this model version and threshold; the kinds it lacks come from one request to the service (one model run)
and are stored back.

The rules are checked twice: first on what the PACS says of the instance (QIDO-RS attributes, Orthanc's
tags), so that a knee or a lateral view is skipped without its pixels being fetched; then, for what
passes, on the downloaded file itself, which has the last word when the two disagree.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pydicom
from pydicom.dataset import Dataset
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.pacs.instance import SELECTION_ATTRIBUTES, Instance, Pacs
from app.pacs.service_client import ServiceClient, ServiceRefused, is_transient
from app.pacs.state import BridgeState
from app.pipeline.dicom.common import ModelRef, result_uid
from app.pipeline.judge import JUDGEMENT_CODES
from app.pipeline.select import SelectionRules

log = logging.getLogger("app.pacs")


def describe_failure(exc: BaseException | None) -> str:
    """What went wrong, without the URL: DICOMweb paths carry study, series and instance UIDs."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.method} answered {exc.response.status_code}"
    return type(exc).__name__


def told_header(rules: SelectionRules, told: Mapping[str, str]) -> Dataset:
    """A header of what the PACS told of an instance, for the rules to judge before any download. An
    attribute it did not tell gets a value the rules admit, so only what is known can skip the instance
    (the downloaded file is judged whole)."""
    admitted = {"Modality": rules.modalities, "BodyPartExamined": rules.body_parts, "ViewPosition": rules.views}
    header = Dataset()
    for keyword in SELECTION_ATTRIBUTES:
        value = told[keyword] if keyword in told else next(iter(admitted.get(keyword, ())), "")
        if value:
            setattr(header, keyword, value)
    return header


@dataclass
class Summary:
    """One run: instances by what became of them, results by whether they were stored now or found."""

    found: int = 0
    already_done: int = 0  # instances the state file records as done for this model, threshold and kinds
    processed: list[str] = field(default_factory=list)  # instances finished in this run
    stored: int = 0  # results made and stored now
    already_in_pacs: int = 0  # results the PACS already held: not made again
    downloaded: int = 0  # source images fetched from the PACS (never one the rules skip before download)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    interrupted: bool = False
    stop_reason: str | None = None

    def table(self) -> str:
        rows = [("instances found (selected modalities)", self.found), ("already done (state file)", self.already_done),
                ("results stored now", self.stored), ("results already in the PACS", self.already_in_pacs),
                ("skipped (selection rules, judgement)", len(self.skipped)), ("images downloaded", self.downloaded),
                ("failed (skipped)", len(self.failed)),
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
    tta: str = "none"  # the service's default, sent with every request

    def result_uids(self, sop_uid: str) -> dict[str, str]:
        """Kind -> the SOP Instance UID of that result of the source ``sop_uid`` (as the service makes it)."""
        return {kind: result_uid(kind, sop_uid, self.model.sha256, self.threshold, self.tta) for kind in self.outputs}


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
        """The results of one instance that the PACS does not hold yet; its file is downloaded only when
        the rules admit it by what the PACS says and some result is still to be made."""
        told = self.retry(self.pacs.selection_attributes, instance)
        reason = self.job.rules.reason_to_skip(told_header(self.job.rules, told))
        if reason:
            self.skip(instance, reason, summary, "before download")
            return
        missing = self.missing_results(instance, summary)
        if missing:
            dicom = self.retry(self.pacs.download, instance)
            summary.downloaded += 1
            header = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True, force=True)
            reason = self.job.rules.reason_to_skip(header)
            if reason:  # the file disagrees with what the PACS said of it
                self.skip(instance, reason, summary, "after download")
                return
            made = self.retry(self.service.results, dicom, list(missing), self.job.threshold, self.job.tta)
            for kind, uid in missing.items():
                self.retry(self.pacs.upload, made[kind])
                summary.stored += 1
                self.record(instance, kind, uid)
        self.state.mark_done(instance.sop_instance_uid)
        summary.processed.append(instance.sop_instance_uid)

    def missing_results(self, instance: Instance, summary: Summary) -> dict[str, str]:
        """Kind -> UID of the results neither the state file nor the PACS holds (those the PACS holds are
        recorded now)."""
        missing: dict[str, str] = {}
        for kind, uid in self.job.result_uids(instance.sop_instance_uid).items():
            if self.state.has_result(instance.sop_instance_uid, uid):
                continue
            if self.retry(self.pacs.has_instance, instance.study_instance_uid, uid):
                summary.already_in_pacs += 1
                self.record(instance, kind, uid)
            else:
                missing[kind] = uid
        return missing

    def record(self, instance: Instance, kind: str, uid: str) -> None:
        self.state.record_result(instance.sop_instance_uid, uid, kind, self.job.model.sha256, self.job.threshold)

    def skip(self, instance: Instance, reason: str, summary: Summary, when: str) -> None:
        log.info("skipped an instance %s: %s", when, reason)
        self.state.mark_skipped(instance.sop_instance_uid, reason)
        summary.skipped[instance.sop_instance_uid] = reason

    def not_judged(self, instance: Instance, exc: ServiceRefused, summary: Summary) -> None:
        """Recorded as skipped for this model (a later model, or a fixed header, is tried again); logged by code."""
        log.info("skipped an instance by the service's judgement: %s", exc.code)
        self.state.mark_not_judged(instance.sop_instance_uid, f"{exc.code}: {exc.detail}", self.job.model.sha256)
        summary.skipped[instance.sop_instance_uid] = exc.code

    def is_done(self, instance: Instance) -> bool:
        sop = instance.sop_instance_uid
        return self.state.is_done(sop, self.job.result_uids(sop).values(), self.job.model.sha256)

    def run(self, instances: list[Instance], progress: bool = True) -> Summary:
        from tqdm import tqdm

        summary = Summary(found=len(instances))
        todo = [i for i in instances if not self.is_done(i)]
        summary.already_done = len(instances) - len(todo)
        bar = tqdm(todo, desc="segmenting", unit="image", disable=not progress)
        index = 0
        try:
            for index, instance in enumerate(bar):
                try:
                    self.process(instance, summary)
                except ServiceRefused as exc:
                    if exc.code in JUDGEMENT_CODES:  # the model cannot judge this image: nothing stored
                        self.not_judged(instance, exc, summary)
                        continue
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
            summary.pending = [i.sop_instance_uid for i in todo[index:] if not self.is_done(i)]
        finally:
            bar.close()
        return summary
