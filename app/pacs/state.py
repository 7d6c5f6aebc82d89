"""What the bridge has done, in a JSON file written atomically after every step, so that an
interrupted run (Ctrl-C, crash, a service down) leaves a consistent record and a re-run
neither repeats finished work nor loses pending work."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class BridgeState:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"processed": {}, "partial": {}, "failed": {}, "skipped": {}}
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text()))

    def is_processed(self, sop_uid: str) -> bool:
        return sop_uid in self.data["processed"]

    def is_done(self, sop_uid: str) -> bool:
        """Processed, or skipped by the selection rules: nothing more to do for it."""
        return sop_uid in self.data["processed"] or sop_uid in self.data["skipped"]

    def mark_skipped(self, sop_uid: str, reason: str) -> None:
        self.data["skipped"][sop_uid] = reason
        self.save()

    def stored(self, sop_uid: str) -> dict[str, str]:
        """Outputs already stored for an instance not yet finished: {"seg": uid, "sc": uid}."""
        return dict(self.data["partial"].get(sop_uid, {}))

    def record_output(self, sop_uid: str, kind: str, output_uid: str) -> None:
        self.data["partial"].setdefault(sop_uid, {})[kind] = output_uid
        self.save()

    def mark_processed(self, sop_uid: str) -> None:
        outputs = self.data["partial"].pop(sop_uid, {})
        self.data["processed"][sop_uid] = {**outputs, "at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self.data["failed"].pop(sop_uid, None)
        self.save()

    def mark_failed(self, sop_uid: str, reason: str) -> None:
        self.data["failed"][sop_uid] = reason
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)
