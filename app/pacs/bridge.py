"""The bridge loop: for each unprocessed CR/DX instance, ask the service for a DICOM SEG and a
Secondary Capture and store both back into Orthanc.

Transient failures (service or Orthanc unreachable, 5xx, 429) are retried with exponential
backoff (tenacity); when retries run out the instance and all after it stay *pending* for the
next run. An instance the service refuses (4xx) is logged by its UIDs, recorded as failed and
skipped. State is written after each step, so Ctrl-C leaves a consistent record.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pydicom
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.pacs.orthanc import Instance, OrthancClient
from app.pacs.state import BridgeState

log = logging.getLogger("app.pacs")
OUTPUTS = (("seg", "dicom-seg"), ("sc", "dicom-sc"))


class ServiceRefused(Exception):
    """The service answered 4xx for an instance: that instance is bad, not the connection."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return False


@dataclass
class Summary:
    found: int = 0
    already_done: int = 0
    processed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    interrupted: bool = False
    stop_reason: str | None = None

    def table(self) -> str:
        rows = [("CR/DX instances found", self.found), ("already processed", self.already_done),
                ("processed now", len(self.processed)), ("failed (skipped)", len(self.failed)),
                ("pending (retry next run)", len(self.pending))]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {count:>6}" for name, count in rows]
        if self.stop_reason:
            lines.append(f"stopped early: {self.stop_reason}")
        return "\n".join(lines)


class Bridge:
    def __init__(self, orthanc: OrthancClient, service_url: str, state: BridgeState, threshold: float | None = None,
                 api_key: str | None = None, retries: int = 5, retry_wait: float = 1.0, timeout: float = 120.0):
        self.orthanc = orthanc
        headers = {"X-API-Key": api_key} if api_key else {}
        self.service = httpx.Client(base_url=service_url.rstrip("/"), headers=headers, timeout=timeout)
        self.state = state
        self.threshold = threshold
        self.retrying = dict(stop=stop_after_attempt(retries), reraise=False,
                             wait=wait_exponential(multiplier=retry_wait, max=30),
                             retry=retry_if_exception(is_transient))

    def close(self) -> None:
        self.service.close()

    def retry(self, fn: Callable, *args):
        """``fn(*args)`` with backoff on transient failures (RetryError when they last)."""
        for attempt in Retrying(**self.retrying):
            with attempt:
                return fn(*args)

    def _segment(self, dicom: bytes, fmt: str) -> bytes:
        params = {"format": fmt}
        if self.threshold is not None:
            params["threshold"] = self.threshold
        r = self.service.post("/segment", params=params, files={"file": ("image.dcm", dicom, "application/dicom")})
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceRefused(f"{r.status_code}: {detail}")
        r.raise_for_status()
        return r.content

    def process(self, instance: Instance) -> None:
        """SEG and SC for one instance, skipping outputs a previous run already stored."""
        done = self.state.stored(instance.sop_instance_uid)
        dicom = None
        for kind, fmt in OUTPUTS:
            if kind in done:
                continue
            if dicom is None:
                dicom = self.retry(self.orthanc.download, instance)
            output = self.retry(self._segment, dicom, fmt)
            self.retry(self.orthanc.upload, output)
            uid = str(pydicom.dcmread(io.BytesIO(output), stop_before_pixels=True).SOPInstanceUID)
            self.state.record_output(instance.sop_instance_uid, kind, uid)
        self.state.mark_processed(instance.sop_instance_uid)

    def run(self, instances: list[Instance], progress: bool = True) -> Summary:
        from tqdm import tqdm

        summary = Summary(found=len(instances))
        todo = [i for i in instances if not self.state.is_processed(i.sop_instance_uid)]
        summary.already_done = len(instances) - len(todo)
        bar = tqdm(todo, desc="segmenting", unit="image", disable=not progress)
        index = 0
        try:
            for index, instance in enumerate(bar):
                uids = (f"study {instance.study_instance_uid} series {instance.series_instance_uid} "
                        f"instance {instance.sop_instance_uid}")
                try:
                    self.process(instance)
                    summary.processed.append(instance.sop_instance_uid)
                except ServiceRefused as exc:
                    log.warning("skipped %s: the service refused it (%s)", uids, exc)
                    self.state.mark_failed(instance.sop_instance_uid, str(exc))
                    summary.failed[instance.sop_instance_uid] = str(exc)
                except (RetryError, httpx.HTTPError) as exc:
                    cause = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
                    summary.stop_reason = f"{type(cause).__name__}: {cause}"
                    log.error("giving up for now at %s: %s", uids, summary.stop_reason)
                    summary.pending = [i.sop_instance_uid for i in todo[index:]]
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.stop_reason = "interrupted"
            summary.pending = [i.sop_instance_uid for i in todo[index:]
                               if not self.state.is_processed(i.sop_instance_uid)]
        finally:
            bar.close()
        return summary
