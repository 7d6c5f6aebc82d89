"""The deliverer's retry and backoff on their own (fast): the real Deliverer over a real spool, with a
tiny destination, or a real C-STORE SCP (pynetdicom) in this process. The node with dcmtk and
Orthanc: tests/node/test_node.py."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt

from app.node.sender import CStoreSender, DestinationDown, DicomDestination, Refused
from app.node.spool import Spool
from app.node.worker import Deliverer
from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.servers import free_port

COVID = fixture_images("Val", "COVID-19")
R1, R2, R3 = (make_cxr_dicom(COVID[0], size=64) for _ in range(3))  # stand-ins for results


class FlakyDestination:
    """Down for the first ``down`` attempts, then stores everything (or refuses what ``refuse`` names)."""

    def __init__(self, down: int, refuse: bytes | None = None):
        self.down, self.refuse = down, refuse
        self.attempts: list[float] = []
        self.stored: list[bytes] = []

    def describe(self) -> str:
        return "flaky test destination"

    def send(self, items: list[bytes]) -> list[Exception | None]:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.down:
            raise DestinationDown("connection refused")
        self.stored += [data for data in items if data != self.refuse]
        return [Refused("status 0xA900") if data == self.refuse else None for data in items]


def queue(spool: Spool, *payloads: bytes) -> list[Path]:
    return [spool.write(spool.outgoing, f"{spool.new_name()}-seg.dcm", data) for data in payloads]


def test_a_destination_that_fails_twice_then_accepts_gets_each_result_once(tmp_path: Path, caplog):
    spool = Spool(tmp_path / "spool")
    queue(spool, R1, R2, R3)
    destination = FlakyDestination(down=2)
    deliverer = Deliverer(spool, [destination], max_wait=0.2)
    with caplog.at_level(logging.WARNING, logger="app.node"):
        deliverer.drain()
    assert destination.stored == [R1, R2, R3] and not spool.items(spool.outgoing)
    assert len(destination.attempts) == 3 and deliverer.failures == 0
    # it waits between attempts, never longer than COVIDSEG_NODE_RETRY_MAX_WAIT however short that is
    gaps = [b - a for a, b in zip(destination.attempts, destination.attempts[1:])]
    assert all(gap >= 0.19 for gap in gaps), gaps
    unreachable = "destination unreachable (connection refused); 3 result(s) queued, next attempt in 0.2 s"
    assert caplog.text.count(unreachable) == 2, caplog.text


def test_the_wait_between_attempts_doubles_up_to_the_maximum(tmp_path: Path):
    deliverer = Deliverer(Spool(tmp_path / "spool"), [], max_wait=4.0)
    waits = []
    for failures in range(1, 7):
        deliverer.failures = failures
        waits.append(deliverer.backoff(deliverer._state()))
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_refused_result_is_set_aside_and_the_others_delivered(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    _, bad, _ = queue(spool, R1, R2, R3)
    destination = FlakyDestination(down=0, refuse=R2)
    Deliverer(spool, [destination], max_wait=0.05).drain()
    assert destination.stored == [R1, R3] and not spool.items(spool.outgoing)
    assert spool.items(spool.failed) == [spool.failed / bad.name]
    assert (spool.failed / f"{bad.stem}.reason.txt").read_text() == "flaky test destination: status 0xA900"


@pytest.fixture
def storage_scp():
    """A real C-STORE SCP on loopback, AE title PACS: its address and the SOP Instance UIDs it stored."""
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(event.dataset.SOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield DicomDestination("PACS", "127.0.0.1", port), stored
    finally:
        server.shutdown()


def test_an_unreadable_result_in_the_spool_is_set_aside_not_blocking_the_queue(tmp_path: Path, storage_scp):
    """A result cut short (a disk error, a copy gone wrong) must not hold up every result behind it."""
    destination, stored = storage_scp
    spool = Spool(tmp_path / "spool")
    good = [make_cxr_dicom(COVID[0], size=128), make_cxr_dicom(COVID[1], size=128)]
    _, cut, _ = queue(spool, good[0], good[1][:100], good[1])
    deliverer = Deliverer(spool, [CStoreSender(destination, "COVIDSEG", timeout=10)], max_wait=0.05)
    runner = threading.Thread(target=deliverer.drain)
    runner.start()
    runner.join(timeout=30)
    deliverer.stop()
    assert not runner.is_alive()
    assert stored == [read(good[0]).SOPInstanceUID, read(good[1]).SOPInstanceUID]
    assert spool.items(spool.failed) == [spool.failed / cut.name] and not spool.items(spool.outgoing)
    assert "not a readable DICOM file" in (spool.failed / f"{cut.stem}.reason.txt").read_text()
