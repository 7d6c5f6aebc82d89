"""``python -m app.node.health`` against a real node: a node SIGKILLed reads unhealthy within the check's
limit, a live one stays healthy while idle and while it backs off from a destination that is down; and the
heartbeat's own rule (a worker busy with one long item stays marked, a hung one does not), over real threads."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from app.node.spool import Spool, beat_age
from app.node.worker import Heartbeat, SpoolWorker
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.node.test_node import health, queued, wait_for, write
from tests.servers import free_port, node, store

COVID = fixture_images("Val", "COVID-19")
LIMIT = 12.0  # seconds: the test's own --max-age, against a beat every 2 s (room for a busy CI machine)


def test_the_default_limit_notices_a_dead_node_within_two_minutes(tmp_path: Path):
    checked = health(tmp_path / "spool")  # no spool: unhealthy, and the limit it applied
    limit = float(re.search(r"\(limit (\d+) s\)", checked.stdout).group(1))
    assert checked.returncode == 1 and 30 <= limit <= 120, checked.stdout


def test_a_live_node_stays_healthy_and_a_killed_one_turns_unhealthy_within_the_limit(tmp_path: Path):
    spool, port = tmp_path / "spool", free_port()
    # the destination is down, and waits between attempts grow past the limit (0.5, 1, 2, 4, 8, 16 s)
    with node(spool, port, tmp_path / "node.log", COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1",
              COVIDSEG_NODE_HEARTBEAT_INTERVAL="2", COVIDSEG_NODE_RETRY_MAX_WAIT="60") as proc:
        assert store(port, "MODALITY", [write(tmp_path, "cxr.dcm", make_cxr_dicom(COVID[0], size=256))]).returncode == 0
        wait_for(lambda: queued(spool, "outgoing"), what="results queued")
        started = time.monotonic()
        while time.monotonic() - started < 40:  # idle segmenter, deliverer in 8, 16 and 32 s backoffs, past the limit
            checked = health(spool, "--max-age", str(LIMIT))
            assert checked.returncode == 0, checked.stdout
            time.sleep(1)
        assert "next attempt in 16.0 s" in (tmp_path / "node.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed = time.monotonic()
        while health(spool, "--max-age", str(LIMIT)).returncode == 0:
            assert time.monotonic() - killed < LIMIT + 5, "still healthy after the node was killed"
            time.sleep(0.2)
        assert time.monotonic() - killed >= LIMIT - 2  # the marks were fresh when it died
    assert health(spool, "--max-age", str(LIMIT)).stdout.startswith("unhealthy: last alive segmenter")


class Busy(SpoolWorker):
    """A worker whose one item takes until ``release`` is set: a long image, or a hung call."""

    def __init__(self, spool: Spool):
        super().__init__("segmenter", spool, poll=0.1)
        self.started, self.release = threading.Event(), threading.Event()

    def drain(self) -> None:
        self.beat()
        self.started.set()
        self.release.wait()
        self.stop()


def test_the_heartbeat_carries_a_long_item_and_drops_a_hung_worker(tmp_path: Path, caplog):
    spool = Spool(tmp_path / "spool")
    worker = Busy(spool)
    worker.start()
    assert worker.started.wait(10)
    heartbeat = Heartbeat(spool, [worker], interval=0.1, stuck_after=2.0)
    heartbeat.start()
    try:
        for _ in range(10):  # 1 s into one item: marked alive all along
            time.sleep(0.1)
            assert beat_age(spool.root, "segmenter") < 1.5
        time.sleep(2.5)  # past stuck_after without progress: the mark ages
        assert beat_age(spool.root, "segmenter") > 1.0
        assert "the segmenter is no longer marked alive (no progress for" in caplog.text
        worker.release.set()
        worker.join(10)
        assert not worker.is_alive()
        dead_since = beat_age(spool.root, "segmenter")
        time.sleep(0.5)
        assert beat_age(spool.root, "segmenter") >= dead_since + 0.4  # an ended thread is not marked either
    finally:
        heartbeat.stop()
        worker.release.set()
        heartbeat.join(10)
