"""The node's spool: received images and undelivered results, on disk so no work is lost.

It holds patient data. The folders are created owner-only (0700) and every file owner-only
(0600); a file is written to a temporary name, flushed to disk and renamed, so a crash never
leaves a half-written item, and the folder is flushed too before the item counts as received, so
the rename survives a power loss. Items leave the spool as soon as their results are delivered.

    incoming/  received instances waiting to be segmented (acknowledged only once here)
    outgoing/  results waiting to be delivered
    failed/    instances that could not be segmented, results the destination refused or that cannot be read,
               kept for an administrator (never retried by themselves)
    .alive-*   empty files renewed for each live worker every few seconds (``python -m app.node.health``)
    done.sqlite  the instances already done, so one sent again is not segmented again (app.node.done)
    audit/     the audit log, unless COVIDSEG_NODE_AUDIT_LOG puts it elsewhere (app.node.audit)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

FOLDERS = ("incoming", "outgoing", "failed")


def heartbeat_path(root: Path | str, worker: str) -> Path:
    return Path(root) / f".alive-{worker}"


def beat_age(root: Path | str, worker: str) -> float | None:
    """Seconds since ``worker`` last marked itself alive in the spool at ``root``; None if it never
    has. Reads only: opening a :class:`Spool` would tidy it under the running node."""
    try:
        return max(0.0, time.time() - heartbeat_path(root, worker).stat().st_mtime)
    except FileNotFoundError:
        return None


def sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: until then a power loss may undo a rename into it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        for name in ("", *FOLDERS):
            folder = self.root / name
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)  # also when it existed with wider rights
        for name in FOLDERS:  # a crash mid-write leaves only a temporary file: drop it
            for tmp in (self.root / name).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def outgoing(self) -> Path:
        return self.root / "outgoing"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def beat(self, worker: str) -> None:
        """Mark ``worker`` alive now: an empty file whose age :func:`beat_age` reads."""
        path = heartbeat_path(self.root, worker)
        path.touch(mode=0o600)
        os.utime(path)

    @staticmethod
    def new_name() -> str:
        """Time-ordered, so items are handled in the order they arrived."""
        return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"

    def write(self, folder: Path, name: str, data: bytes) -> Path:
        path = folder / name
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        sync_folder(folder)  # the node acknowledges a received image once this returns
        return path

    def receive(self, data: bytes) -> Path:
        return self.write(self.incoming, f"{self.new_name()}.dcm", data)

    def items(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.dcm"))

    def set_aside(self, path: Path, reason: str) -> Path:
        """Move an item to failed/ with a note of why."""
        target = self.failed / path.name
        os.replace(path, target)
        self.write(self.failed, f"{path.stem}.reason.txt", reason.encode())
        return target
