"""A real node over real DIMSE (dcmtk's echoscu and storescu): the audit log, AE titles bound to hosts,
the Prometheus endpoint, and an instance sent twice."""

from __future__ import annotations

import io
import json
import stat
import threading
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.node.test_node import queued, wait_for, write
from tests.servers import echo, free_port, node, store

COVID, NORMAL = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")
SECRET_NAME = "SECRET^PATIENT"


def audit_of(spool: Path) -> list[dict]:
    """The node's audit records (by default in the spool)."""
    path = spool / "audit" / "node-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def events(spool: Path, name: str) -> list[dict]:
    return [r for r in audit_of(spool) if r["Event"] == name]


def echo_from(address: str, port: int, calling: str) -> bool:
    """A C-ECHO from a chosen source address (dcmtk cannot choose one): pynetdicom bound to ``address``."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDSEG", bind_address=(address, 0))
    accepted = assoc.is_established
    if accepted:
        assoc.send_c_echo()
        assoc.release()
    return accepted


def test_an_ae_title_bound_to_a_host_is_refused_from_another_address(tmp_path: Path):
    spool, port = tmp_path / "spool", free_port()
    image = write(tmp_path, "cxr.dcm", make_cxr_dicom(COVID[0], size=256))
    # PROBE (any address) only tells tests.servers.node that the node is up
    with node(spool, port, tmp_path / "node.log", COVIDSEG_NODE_ALLOWED_CALLERS="PROBE,MODALITY@127.0.0.2",
              COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        refused = echo(port, "MODALITY")  # dcmtk calls from 127.0.0.1
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert store(port, "MODALITY", [image]).returncode != 0
        assert echo_from("127.0.0.2", port, "MODALITY")  # the address it is bound to
        assert not echo_from("127.0.0.2", port, "STRANGER")
    assert not queued(spool, "incoming") and not queued(spool, "outgoing")
    rejected = [(r["SourceUserID"], r["SourceNetworkAccessPointID"], r["EventOutcomeDescription"])
                for r in events(spool, "association-rejected")]
    assert rejected == [("MODALITY", "127.0.0.1", "calling AE title not allowed from this address")] * 2 + \
        [("STRANGER", "127.0.0.2", "calling AE title not recognised")]
    accepted = {(r["SourceUserID"], r["SourceNetworkAccessPointID"]) for r in events(spool, "association-accepted")}
    assert accepted == {("PROBE", "127.0.0.1"), ("MODALITY", "127.0.0.2")}
    assert "rejected an association from MODALITY at 127.0.0.1" in (tmp_path / "node.log").read_text()

    with node(spool, port, tmp_path / "node.log", COVIDSEG_NODE_ALLOWED_CALLERS="MODALITY@127.0.0.1",
              COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        assert echo(port, "MODALITY").returncode == 0
        assert store(port, "MODALITY", [image]).returncode == 0
        assert not echo_from("127.0.0.2", port, "MODALITY")
    assert events(spool, "instance-queued")[-1]["SourceNetworkAccessPointID"] == "127.0.0.1"


class StorageSCP:
    """A real C-STORE SCP (pynetdicom), AE title PACS, that counts every C-STORE it is sent; up or down."""

    def __init__(self, port: int):
        self.port, self.stored, self.server = port, [], None
        self.lock = threading.Lock()

    def on_store(self, event: evt.Event) -> int:
        with self.lock:
            self.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()


@pytest.fixture
def pacs():
    scp = StorageSCP(free_port())
    yield scp
    scp.stop()


def scrape(port: int) -> dict[tuple, float]:
    """The node's real Prometheus endpoint: (sample name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def multi_frame() -> bytes:
    ds = read(make_cxr_dicom(COVID[1], size=128))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_an_instance_sent_twice_is_delivered_once_and_everything_is_audited_and_counted(tmp_path: Path, pacs):
    spool, log, port, metrics_port = tmp_path / "spool", tmp_path / "node.log", free_port(), free_port()
    kw = {"study_uid": generate_uid(), "patient_name": SECRET_NAME}
    source = write(tmp_path, "cxr.dcm", make_cxr_dicom(COVID[0], "DX", size=512, **kw))
    knee = write(tmp_path, "knee.dcm", make_cxr_dicom(NORMAL[0], "DX", body_part="KNEE", **kw))
    broken = write(tmp_path, "multi.dcm", multi_frame())
    uid = {p.name: str(read(p.read_bytes()).SOPInstanceUID) for p in (source, knee, broken)}
    sop_class = {uid[p.name]: str(read(p.read_bytes()).SOPClassUID) for p in (source, knee, broken)}
    with node(spool, port, log, COVIDSEG_NODE_DESTINATION=f"PACS@127.0.0.1:{pacs.port}",
              COVIDSEG_NODE_METRICS_PORT=str(metrics_port)):
        # 1. the destination is down: results wait, the failed image is set aside, all of it counted
        assert store(port, "MODALITY", [source, knee, broken]).returncode == 0
        wait_for(lambda: len(queued(spool, "outgoing")) == 3 and len(queued(spool, "failed")) == 1
                 and events(spool, "destination-unreachable"), what="results queued, destination down")
        down = scrape(metrics_port)
        assert down[("covidseg_node_queue_depth", (("queue", "outgoing"),))] == 3
        assert down[("covidseg_node_queue_depth", (("queue", "incoming"),))] == 0
        assert down[("covidseg_node_failed_items", ())] == 1
        assert down[("covidseg_node_instances_received_total", (("outcome", "queued"),))] == 2
        assert down[("covidseg_node_instances_received_total", (("outcome", "not_selected"),))] == 1
        assert down[("covidseg_node_instances_segmented_total", ())] == 1
        assert down[("covidseg_node_failed_total", (("stage", "segment"),))] == 1
        where = (("destination", f"C-STORE to PACS@127.0.0.1:{pacs.port}"),)
        assert down[("covidseg_node_delivery_attempts_failed_total", where)] >= 1
        # 2. it comes up: each result is delivered once
        pacs.start()
        wait_for(lambda: not queued(spool, "outgoing"), what="delivered")
        delivered = sorted(pacs.stored)
        # 3. the same file again: acknowledged, recognised, neither segmented nor sent again
        assert store(port, "MODALITY", [source]).returncode == 0
        wait_for(lambda: events(spool, "instance-already-done"), what="re-sent instance skipped")
        assert not queued(spool, "incoming") and not queued(spool, "outgoing")
        assert echo(port, "STRANGER").returncode != 0
        up = scrape(metrics_port)
    assert len(delivered) == 3 and sorted(pacs.stored) == delivered  # one set of results, not two
    assert up[("covidseg_node_results_delivered_total", where)] == 3
    assert up[("covidseg_node_instances_already_done_total", ())] == 1
    assert up[("covidseg_node_instances_segmented_total", ())] == 1
    assert up[("covidseg_node_instances_received_total", (("outcome", "queued"),))] == 3
    assert up[("covidseg_node_delivery_latency_seconds_count", ())] == 3
    assert up[("covidseg_node_queue_depth", (("queue", "outgoing"),))] == 0
    assert up[("covidseg_node_failed_items", ())] == 1

    audit = spool / "audit" / "node-audit.jsonl"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600 and stat.S_IMODE(audit.parent.stat().st_mode) == 0o700
    for r in audit_of(spool):
        assert datetime.fromisoformat(r["EventDateTime"]).utcoffset().total_seconds() == 0
        assert r["AuditSourceID"] == "COVIDSEG" and r["EventOutcomeIndicator"] in (0, 4, 8, 12)
    # who sent what: calling AE, its address and port, and the node as called
    received = events(spool, "instance-queued")
    assert [r["ParticipantObjectID"] for r in received] == [uid["cxr.dcm"], uid["multi.dcm"], uid["cxr.dcm"]]
    assert sop_class[uid["cxr.dcm"]] == DigitalXRayImageStorageForPresentation
    for r in received:
        assert (r["SourceUserID"], r["SourceNetworkAccessPointID"], r["DestinationUserID"], r["DestinationPort"]) == \
            ("MODALITY", "127.0.0.1", "COVIDSEG", port)
        assert isinstance(r["SourcePort"], int) and r["SOPClassUID"] == sop_class[r["ParticipantObjectID"]]
        assert (r["EventID"], r["EventActionCode"], r["ParticipantObjectTypeCodeRole"]) == ("110104", "C", 3)
    [skipped] = events(spool, "instance-not-selected")
    assert skipped["ParticipantObjectID"] == uid["knee.dcm"] and "body part KNEE" in skipped["EventOutcomeDescription"]
    [failed] = events(spool, "instance-not-segmented")
    assert failed["ParticipantObjectID"] == uid["multi.dcm"] and failed["EventOutcomeIndicator"] == 8
    assert "multi_frame" in failed["EventOutcomeDescription"]
    made = events(spool, "result-made")
    assert sorted(r["ParticipantObjectID"] for r in made) == delivered
    assert {r["SourceSOPInstanceUID"] for r in made} == {uid["cxr.dcm"]} and {r["EventID"] for r in made} == {"110103"}
    # what was delivered where
    sent = events(spool, "result-delivered")
    assert sorted(r["ParticipantObjectID"] for r in sent) == delivered
    for r in sent:
        assert (r["SourceUserID"], r["DestinationUserID"], r["DestinationNetworkAccessPointID"], r["DestinationPort"],
                r["SourceSOPInstanceUID"], r["EventID"], r["EventActionCode"]) == \
            ("COVIDSEG", "PACS", "127.0.0.1", pacs.port, uid["cxr.dcm"], "110104", "R")
    assert all(r["EventOutcomeIndicator"] == 4 for r in events(spool, "destination-unreachable"))
    assert {r["EventID"] for r in events(spool, "delivery-started")} == {"110102"}
    [again] = events(spool, "instance-already-done")
    assert again["ParticipantObjectID"] == uid["cxr.dcm"] and sorted(again["ResultSOPInstanceUIDs"]) == delivered
    [stranger] = events(spool, "association-rejected")
    assert stranger["SourceUserID"] == "STRANGER" and stranger["EventOutcomeIndicator"] == 4
    every = [r["Event"] for r in audit_of(spool)]
    assert every[0] == "node-started" and every[-1] == "node-stopped"
    # the ordinary log says what happened without a UID or a name
    text = log.read_text()
    assert "skipped an instance already segmented with this model and settings" in text
    for secret in (*uid.values(), *delivered, SECRET_NAME.split("^")[0]):
        assert secret not in text, secret
