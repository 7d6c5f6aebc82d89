"""The node's spool on its own (fast), with real files and a real process killed mid-write.
The node around it, over real DIMSE: tests/node/test_node.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

from app.node.spool import Spool
from tests.conftest import ROOT

ACKNOWLEDGED, IN_FLIGHT = b"DICM acknowledged image" * 100, b"DICM image being received" * 1000


def spool_files(root: Path) -> dict[str, list[str]]:
    return {name: sorted(p.name for p in (root / name).iterdir()) for name in ("incoming", "outgoing", "failed")}


def receive_then_die(root: Path, at: str) -> subprocess.CompletedProcess:
    """A node process that receives one image, then is killed while receiving a second one: at
    ``os.<at>``, i.e. with the second one partly or wholly written to the spool but not yet received."""
    script = textwrap.dedent(f"""
        import os, signal
        from app.node.spool import Spool
        spool = Spool({str(root)!r})
        spool.receive({ACKNOWLEDGED!r})
        os.{at} = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        spool.receive({IN_FLIGHT!r})
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_crash_mid_write_leaves_the_acknowledged_image_and_nothing_else(tmp_path: Path):
    root = tmp_path / "spool"
    for at in ("fsync", "replace"):  # killed before the data is flushed, and after
        killed = receive_then_die(root, at)
        assert killed.returncode == -9, killed.stderr
        assert any(p.name.endswith(".tmp") for p in (root / "incoming").iterdir())  # the debris a crash leaves
        spool = Spool(root)  # the node starting again
        items = spool.items(spool.incoming)
        assert [p.read_bytes() for p in items] == [ACKNOWLEDGED]  # the one in flight was never acknowledged
        assert spool_files(root)["incoming"] == [p.name for p in items]  # no partial file left
        for p in items:
            p.unlink()


def test_a_received_image_is_on_disk_under_its_name_before_it_is_acknowledged(tmp_path: Path, monkeypatch):
    """Its data and the folder entry are flushed (fsync) before ``receive`` returns, so a power loss
    after the acknowledgement cannot leave only the temporary file, which the next start deletes."""
    spool = Spool(tmp_path / "spool")
    synced: list[tuple[str, list[str]]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(("folder", sorted(p.name for p in spool.incoming.iterdir())))
        else:
            synced.append(("file", []))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = spool.receive(ACKNOWLEDGED)
    assert synced == [("file", []), ("folder", [path.name])]


def test_items_are_taken_in_arrival_order_and_set_aside_with_their_reason(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    first, second = spool.receive(b"first"), spool.receive(b"second")
    assert spool.items(spool.incoming) == [first, second]
    kept = spool.set_aside(first, "multi-frame DICOM")
    assert spool.items(spool.incoming) == [second] and spool.items(spool.failed) == [kept]
    assert kept.read_bytes() == b"first" and (spool.failed / f"{first.stem}.reason.txt").read_text() == \
        "multi-frame DICOM"
    for path in (second, kept, spool.failed / f"{first.stem}.reason.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(spool.root, 0o755)
    Spool(spool.root)
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700  # tightened again at start
