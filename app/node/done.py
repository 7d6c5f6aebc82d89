"""Instances already done, so that one sent again is not segmented and delivered again.

An instance counts as done once its results are in outgoing/ (delivery is retried until it
succeeds); a result the destination refuses un-marks its instance, so sending it again makes the
results again. The key is a hash of everything that decides the results: the SOP Instance UID, the
model's sha256, the threshold, the test-time augmentation and the kinds of result made; another
model or setting makes new results. Kept in ``<spool>/done.sqlite`` (owner-only, like the spool),
at most ``limit`` instances (``COVIDSEG_NODE_DONE_MAX``), the oldest forgotten first: about 1.1 kB
each with three results (measured), so some 22 MB at the default 20 000.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from app.pipeline.dicom.common import canonical_threshold

SCHEMA = """
CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, results TEXT NOT NULL, made REAL NOT NULL);
CREATE INDEX IF NOT EXISTS done_made ON done (made);
CREATE TABLE IF NOT EXISTS result (uid TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS result_key ON result (key);
"""


def done_key(sop_instance_uid: str, model_sha256: str, threshold: float, tta: str, kinds: Iterable[str],
             sc_form: Iterable[str] = ()) -> str:
    """The same for the same instance, model and settings (threshold as the result UIDs spell it; ``sc_form``
    the names of a smaller SC, which is another object: none for the full-size one, so its keys stay as they were)."""
    parts = ["covidseg-done-v1", sop_instance_uid, model_sha256, canonical_threshold(threshold), tta, *sorted(kinds),
             *sc_form]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class DoneRecord:
    def __init__(self, path: Path | str, limit: int):
        self.path, self.limit = Path(path), limit
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # sqlite's journal takes the file's mode
        os.fchmod(fd, 0o600)
        os.close(fd)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()  # the segmenter adds, the deliverer forgets
        # Results refused before their instance was marked (the deliverer can take a result from outgoing/
        # between the segmenter's write and its add): the add that comes later must not mark the instance.
        self.refused_early: set[str] = set()

    def results_of(self, key: str) -> list[str] | None:
        """The result SOP Instance UIDs made for ``key``, or None when it is not done."""
        with self.lock:
            row = self.db.execute("SELECT results FROM done WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def add(self, key: str, result_uids: list[str]) -> None:
        with self.lock, self.db:
            if self.refused_early & set(result_uids):  # one of its results was refused already: not done
                self.refused_early -= set(result_uids)
                return
            self.db.execute("BEGIN")
            self._drop(key)
            self.db.execute("INSERT INTO done VALUES (?, ?, ?)", (key, json.dumps(result_uids), time.time()))
            self.db.executemany("INSERT OR REPLACE INTO result VALUES (?, ?)", [(uid, key) for uid in result_uids])
            surplus = self.db.execute("SELECT COUNT(*) FROM done").fetchone()[0] - self.limit
            for (old,) in self.db.execute("SELECT key FROM done ORDER BY made LIMIT ?", (max(0, surplus),)).fetchall():
                self._drop(old)

    def forget_result(self, result_uid: str) -> bool:
        """Un-mark the instance that ``result_uid`` was made from; True when it was marked."""
        with self.lock, self.db:
            self.db.execute("BEGIN")
            row = self.db.execute("SELECT key FROM result WHERE uid = ?", (result_uid,)).fetchone()
            if row:
                self._drop(row[0])
            elif len(self.refused_early) < self.limit:  # bounded: a refusal of a long-forgotten result
                self.refused_early.add(result_uid)
        return row is not None

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM done").fetchone()[0]

    def _drop(self, key: str) -> None:
        self.db.execute("DELETE FROM done WHERE key = ?", (key,))
        self.db.execute("DELETE FROM result WHERE key = ?", (key,))

    def close(self) -> None:
        self.db.close()
