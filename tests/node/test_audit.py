"""The node's audit log, allow-list, done record and metrics on their own (fast, real files and sockets).
The node around them, over real DIMSE with dcmtk: tests/node/test_node_audit.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.node.audit import AuditLog, Participant, destination_of, instance
from app.node.done import DoneRecord, done_key
from app.node.metrics import received_at
from app.node.scp import NO_TITLE, AllowList, normal_address
from app.node.sender import CStoreSender, DicomDestination, StowSender
from app.node.spool import Spool
from app.node.worker import Deliverer
from app.pacs.dicomweb import DicomWebClient
from tests.conftest import ROOT, fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.node.test_deliverer import FlakyDestination, queue

COVID = fixture_images("Val", "COVID-19")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_records_are_flat_json_lines_in_an_owner_only_file(tmp_path: Path):
    path = tmp_path / "audit" / "node-audit.jsonl"
    audit = AuditLog(path, "COVIDSEG", max_bytes=1 << 20, backups=2)
    audit.record("instance-queued", description="queued", source=Participant("MODALITY", "10.0.0.7", 4100),
                 destination=Participant("COVIDSEG", "10.0.0.1", 11112), **instance("1.2.3", "1.2.840.10008.5.1.4.1.1.1"))
    audit.record("destination-unreachable", 4, "down", source=Participant("COVIDSEG"), NumberOfInstances=3)
    audit.close()
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    queued, down = records(path)
    when = datetime.fromisoformat(queued.pop("EventDateTime"))
    assert when.utcoffset().total_seconds() == 0 and abs((datetime.now(timezone.utc) - when).total_seconds()) < 60
    assert queued == {"Event": "instance-queued", "EventID": "110104", "EventIDName": "DICOM Instances Transferred",
                      "EventActionCode": "C", "EventOutcomeIndicator": 0, "EventOutcomeDescription": "queued",
                      "AuditSourceID": "COVIDSEG", "SourceUserID": "MODALITY", "SourceNetworkAccessPointID": "10.0.0.7",
                      "SourcePort": 4100, "DestinationUserID": "COVIDSEG", "DestinationNetworkAccessPointID": "10.0.0.1",
                      "DestinationPort": 11112, "ParticipantObjectID": "1.2.3", "ParticipantObjectTypeCode": 2,
                      "ParticipantObjectTypeCodeRole": 3, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"}
    # absent values are left out, not written as null
    assert down["EventOutcomeIndicator"] == 4 and down["NumberOfInstances"] == 3 and "SourcePort" not in down
    with pytest.raises(KeyError):
        AuditLog(path, "COVIDSEG", 1 << 20, 2).record("no-such-event")


def test_the_audit_log_rotates_and_every_file_stays_owner_only(tmp_path: Path):
    path = tmp_path / "audit" / "node-audit.jsonl"
    path.parent.mkdir(mode=0o755)
    path.write_text("")
    os.chmod(path, 0o644)  # left readable by someone: tightened on open
    audit = AuditLog(path, "COVIDSEG", max_bytes=2048, backups=2)
    for n in range(100):
        audit.record("result-delivered", source=Participant("COVIDSEG"), **instance(f"2.25.{n}", "1.2"))
    audit.close()
    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == ["node-audit.jsonl", "node-audit.jsonl.1", "node-audit.jsonl.2"]
    assert mode(path.parent) == 0o700 and all(mode(f) == 0o600 for f in files)
    assert all(f.stat().st_size <= 2048 for f in files)
    assert records(path)[-1]["ParticipantObjectID"] == "2.25.99"  # the newest in the live file


def test_the_audit_log_defaults_to_the_spool_folder_wherever_that_is(monkeypatch, tmp_path: Path):
    """With the spool: outside the checkout by default, on the spool's volume in Docker and Kubernetes."""
    for name in ("COVIDSEG_NODE_AUDIT_LOG", "COVIDSEG_NODE_SPOOL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert Settings().node_audit_path() == tmp_path / "state" / "covidseg" / "spool" / "audit" / "node-audit.jsonl"
    monkeypatch.setenv("COVIDSEG_NODE_SPOOL_DIR", "/spool")
    assert Settings().node_audit_path() == Path("/spool/audit/node-audit.jsonl")
    monkeypatch.setenv("COVIDSEG_NODE_AUDIT_LOG", str(tmp_path / "elsewhere.jsonl"))
    assert Settings().node_audit_path() == tmp_path / "elsewhere.jsonl"


def test_destinations_are_named_as_the_audit_log_names_participants():
    assert destination_of(CStoreSender(DicomDestination("PACS", "10.1.1.1", 104), "COVIDSEG")) == \
        Participant("PACS", "10.1.1.1", 104)
    url = "https://pacs.example:8443/dicom-web"
    assert destination_of(StowSender(DicomWebClient(url))) == Participant(url, "pacs.example", 8443)


def test_an_allow_list_binds_ae_titles_to_hosts():
    fake_dns = {"ct.example": {"10.0.0.5", "10.0.0.6"}, "127.0.0.2": {"127.0.0.2"}}
    allow = AllowList.parse(["ORTHANC", "MODALITY@127.0.0.2", "MODALITY@ct.example", " CT2 @ 127.0.0.2 "],
                            resolver=fake_dns.__getitem__)
    assert allow.titles_from("127.0.0.2") == ["CT2", "MODALITY", "ORTHANC"]
    assert allow.titles_from("10.0.0.6") == ["MODALITY", "ORTHANC"]
    assert allow.titles_from("127.0.0.1") == ["ORTHANC"]  # MODALITY from here: not recognised
    assert allow.admits("MODALITY", "::ffff:10.0.0.5") and not allow.admits("MODALITY", "127.0.0.1")
    only_bound = AllowList.parse(["MODALITY@127.0.0.2"], resolver=fake_dns.__getitem__)
    assert only_bound.titles_from("127.0.0.1") == [NO_TITLE] and len(NO_TITLE) > 16  # never an AE title
    assert AllowList.parse([]).any_caller and AllowList.parse([]).admits("ANYONE", "192.0.2.1")
    assert normal_address("::ffff:127.0.0.1") == "127.0.0.1" and normal_address("0:0::1") == "::1"


def test_an_allowed_host_may_be_a_name_resolved_at_start():
    allow = AllowList.parse(["MODALITY@localhost"])
    assert allow.admits("MODALITY", "127.0.0.1") and not allow.admits("MODALITY", "127.0.0.2")
    with pytest.raises(ValueError, match="cannot resolve host 'no-such-host.invalid'"):
        AllowList.parse(["MODALITY@no-such-host.invalid"])


@pytest.mark.parametrize("entry", ["MODALITY@", "@10.0.0.1", "SEVENTEEN_CHARS_X@10.0.0.1"])
def test_a_malformed_allowed_caller_is_a_configuration_error(entry):
    with pytest.raises(ValidationError, match="each entry is AE or AE@host"):
        Settings(node_allowed_callers=f"ORTHANC,{entry}")
    assert Settings(node_allowed_callers="ORTHANC, MODALITY@10.0.0.1").node_allowed_callers == \
        ["ORTHANC", "MODALITY@10.0.0.1"]


def node_start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COVIDSEG_NODE_SPOOL_DIR": str(tmp_path / "spool"), "COVIDSEG_NODE_METRICS_PORT": "0",
           "COVIDSEG_NODE_DESTINATION": "PACS@127.0.0.1:1", **env}
    return subprocess.run([sys.executable, "-m", "app.node"], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def test_the_node_does_not_start_with_a_host_it_cannot_resolve_an_audit_log_it_cannot_write_or_a_taken_port(
        tmp_path: Path):
    bad_host = node_start(tmp_path, COVIDSEG_NODE_ALLOWED_CALLERS="MODALITY@no-such-host.invalid")
    assert bad_host.returncode != 0 and "Traceback" not in bad_host.stderr
    assert bad_host.stderr.startswith("configuration error: COVIDSEG_NODE_ALLOWED_CALLERS: cannot resolve host")
    no_audit = node_start(tmp_path, COVIDSEG_NODE_AUDIT_LOG="/proc/covidseg/audit.jsonl")
    assert no_audit.returncode != 0 and "Traceback" not in no_audit.stderr
    assert "cannot open the audit log /proc/covidseg/audit.jsonl (COVIDSEG_NODE_AUDIT_LOG)" in no_audit.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        no_metrics = node_start(tmp_path, COVIDSEG_NODE_HOST="127.0.0.1", COVIDSEG_NODE_METRICS_PORT=str(port))
    assert no_metrics.returncode != 0 and "Traceback" not in no_metrics.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port} (COVIDSEG_NODE_METRICS_PORT)" in no_metrics.stderr


def test_the_done_record_is_owner_only_keyed_by_model_and_settings_and_bounded(tmp_path: Path):
    key = done_key("1.2.3", "ab" * 32, 0.5, "none", ["seg", "sc", "sr"])
    assert key == done_key("1.2.3", "ab" * 32, 0.50, "none", ["sr", "seg", "sc"])  # kinds in any order
    others = [done_key("1.2.4", "ab" * 32, 0.5, "none", ["seg", "sc", "sr"]),
              done_key("1.2.3", "cd" * 32, 0.5, "none", ["seg", "sc", "sr"]),
              done_key("1.2.3", "ab" * 32, 0.25, "none", ["seg", "sc", "sr"]),
              done_key("1.2.3", "ab" * 32, 0.5, "flip", ["seg", "sc", "sr"]),
              done_key("1.2.3", "ab" * 32, 0.5, "none", ["seg", "sr"])]
    assert len({key, *others}) == 6
    done = DoneRecord(tmp_path / "done.sqlite", limit=3)
    assert mode(tmp_path / "done.sqlite") == 0o600 and done.results_of(key) is None
    done.add(key, ["2.25.1", "2.25.2"])
    assert done.results_of(key) == ["2.25.1", "2.25.2"]
    for n, other in enumerate(others):  # the oldest go first once over the limit
        done.add(other, [f"2.25.{10 + n}"])
    assert len(done) == 3 and done.results_of(key) is None and done.results_of(others[-1]) == ["2.25.14"]
    assert done.forget_result("2.25.14") and done.results_of(others[-1]) is None
    assert not done.forget_result("2.25.1")  # forgotten with its instance already
    done.close()
    assert DoneRecord(tmp_path / "done.sqlite", limit=3).results_of(others[-2]) == ["2.25.13"]  # kept on disk


def test_a_refused_result_unmarks_its_instance_so_sending_it_again_remakes_it(tmp_path: Path):
    spool, done = Spool(tmp_path / "spool"), DoneRecord(tmp_path / "done.sqlite", limit=10)
    good, bad = make_cxr_dicom(COVID[0], size=64), make_cxr_dicom(COVID[1], size=64)
    done.add("key-good", [read(good).SOPInstanceUID])
    done.add("key-bad", [read(bad).SOPInstanceUID])
    queue(spool, good, bad)
    Deliverer(spool, [FlakyDestination(down=0, refuse=bad)], max_wait=0.05, done=done).drain()
    assert done.results_of("key-good") == [read(good).SOPInstanceUID] and done.results_of("key-bad") is None


def test_a_spool_name_tells_when_its_instance_arrived():
    name = Spool.new_name()
    assert abs(received_at(Path(f"{name}-seg.dcm")) - datetime.now().timestamp()) < 5
    assert received_at(Path("odd.dcm")) is None


def test_a_result_refused_before_its_instance_is_marked_leaves_it_unmarked(tmp_path: Path):
    # The deliverer can take a result from outgoing/ and see it refused between the segmenter's write
    # and its add: the instance must stay not done, so a resend is segmented again.
    from app.node.done import DoneRecord

    record = DoneRecord(tmp_path / "done.sqlite", limit=10)
    assert record.forget_result("2.25.7") is False
    record.add("instance-key", ["2.25.7", "2.25.8"])
    assert record.results_of("instance-key") is None
    record.add("instance-key", ["2.25.7", "2.25.8"])  # made again later: marked as usual
    assert record.results_of("instance-key") == ["2.25.7", "2.25.8"]
