"""What the bridge has done, in a JSON file written atomically after every step, so that an
interrupted run (Ctrl-C, crash, a service down) leaves a consistent record and a re-run
neither repeats finished work nor loses pending work.

A result is recorded under its own SOP Instance UID. That UID is derived from the source
instance, the model's sha256, the threshold and the kind of result
(:func:`app.pipeline.dicom.common.result_uid`), so what is done is keyed by everything that makes
a result different: a run at another threshold, or with another model, finds its results not
done yet, as the PACS look-up would.

A file that cannot be read (cut short, not this format) is moved aside with a warning and the
run starts from an empty record: the PACS look-ups keep it from storing anything twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("app.pacs")

VERSION = 2


class DamagedState(ValueError):
    """The state file is not a state this bridge wrote."""


def empty_state() -> dict[str, Any]:
    return {"version": VERSION, "results": {}, "failed": {}, "skipped": {}, "not_judged": {}}


def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise DamagedState(f"{what} is not an object")
    return value


def upgraded(raw: Any) -> dict[str, Any]:
    """``raw`` (a parsed state file) in this version's form; version 1 kept results by kind only
    (``processed``/``partial``: {source: {"seg": uid, ...}}), and their UIDs carry the rest."""
    raw = _mapping(raw, "the state")
    state = empty_state()
    for key in ("failed", "skipped", "not_judged"):
        state[key] = dict(_mapping(raw.get(key, {}), key))
    if raw.get("version") == VERSION:
        state["results"] = {src: dict(_mapping(done, "a result record"))
                            for src, done in _mapping(raw.get("results", {}), "results").items()}
        return state
    if "version" in raw:
        raise DamagedState(f"unknown state version {raw['version']!r}")
    for key in ("processed", "partial"):
        for src, outputs in _mapping(raw.get(key, {}), key).items():
            at = _mapping(outputs, "a result record").get("at")
            for kind, uid in outputs.items():
                if kind != "at":
                    state["results"].setdefault(src, {})[uid] = {"kind": kind, "at": at}
    return state


class BridgeState:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.data = self.load()

    def load(self) -> dict[str, Any]:
        """The record in the file, or an empty one when there is none or it is damaged."""
        self._drop_temporary_files()
        if not self.path.exists():
            return empty_state()
        try:
            return upgraded(json.loads(self.path.read_text()))
        except ValueError as exc:  # not UTF-8, not JSON (cut short) or not a state: all ValueErrors
            aside = self.path.with_name(f"{self.path.name}.damaged")
            os.replace(self.path, aside)
            log.warning("the state file %s cannot be read (%s); moved to %s, starting from an empty record "
                        "(results the PACS already holds are found there, not stored again)",
                        self.path, type(exc).__name__, aside)
            return empty_state()

    def is_skipped(self, sop_uid: str) -> bool:
        return sop_uid in self.data["skipped"]

    def has_result(self, sop_uid: str, result_uid: str) -> bool:
        return result_uid in self.data["results"].get(sop_uid, {})

    def is_not_judged(self, sop_uid: str, model_sha256: str | None) -> bool:
        """Refused by this model's input judgement (another model, or the same after the site fixed the
        file's header, is asked again)."""
        record = self.data["not_judged"].get(sop_uid)
        return record is not None and model_sha256 is not None and record.get("model_sha256") == model_sha256

    def is_done(self, sop_uid: str, result_uids: Iterable[str], model_sha256: str | None = None) -> bool:
        """Skipped by the selection rules, refused by this model's judgement, or every one of these results
        recorded."""
        return (self.is_skipped(sop_uid) or self.is_not_judged(sop_uid, model_sha256)
                or all(self.has_result(sop_uid, uid) for uid in result_uids))

    def mark_skipped(self, sop_uid: str, reason: str) -> None:
        self.data["skipped"][sop_uid] = reason
        self.save()

    def mark_not_judged(self, sop_uid: str, reason: str, model_sha256: str) -> None:
        """The service's judgement refused the instance (its code and detail: measured figures, no patient data)."""
        self.data["not_judged"][sop_uid] = {"reason": reason, "model_sha256": model_sha256}
        self.save()

    def record_result(self, sop_uid: str, result_uid: str, kind: str, model_sha256: str, threshold: float) -> None:
        """One result of ``sop_uid`` is in the PACS (stored now, or found there)."""
        self.data["results"].setdefault(sop_uid, {})[result_uid] = {
            "kind": kind, "model_sha256": model_sha256, "threshold": threshold,
            "at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self.save()

    def mark_done(self, sop_uid: str) -> None:
        """Every result asked for is in the PACS: an earlier failure no longer stands."""
        if self.data["failed"].pop(sop_uid, None) is not None:
            self.save()

    def mark_failed(self, sop_uid: str, reason: str) -> None:
        self.data["failed"][sop_uid] = reason
        self.save()

    def _temporary_prefix(self) -> str:
        return f".{self.path.name}."

    def _drop_temporary_files(self) -> None:
        """A run killed while saving leaves its temporary file (never the state itself half-written)."""
        for tmp in self.path.parent.glob(f"{self._temporary_prefix()}*.tmp"):
            tmp.unlink(missing_ok=True)

    def save(self) -> None:
        """Write to a temporary file, flush it to disk, then rename it over the state: a crash or a
        full disk leaves the previous state whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self._temporary_prefix(), suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
