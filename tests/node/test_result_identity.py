"""A result keeps its UID in every sender: the real node delivers the same SEG, SC and SR twice by STOW-RS and
twice by C-STORE (the SC compressed to JPEG-LS when Orthanc takes it) into one real Orthanc, which then holds
exactly one instance per result, under the UIDs the audit log names. (C-STORE alone, into dcmtk's storescp:
tests/node/test_sc_compression.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom
from tests.node.test_node import queued, wait_for, write
from tests.node.test_node_audit import events
from tests.servers import free_port, node, orthanc, store

COVID = fixture_images("Val", "COVID-19")


def held(url: str) -> list[pydicom.Dataset]:
    """Every instance Orthanc holds, as stored (headers only)."""
    return [pydicom.dcmread(io.BytesIO(httpx.get(f"{url}/instances/{oid}/file", timeout=60).content),
                            stop_before_pixels=True)
            for oid in httpx.get(f"{url}/instances", timeout=60).json()]


def test_results_delivered_twice_by_stow_rs_and_c_store_are_one_instance_each(tmp_path: Path):
    spool, port, pacs_dicom = tmp_path / "spool", free_port(), free_port()
    source = write(tmp_path, "cr.dcm", make_cxr_dicom(COVID[0], "CR", size=1024))
    with orthanc(tmp_path / "orthanc", dicom_port=pacs_dicom, dicomweb=True) as url, \
            node(spool, port, tmp_path / "node.log", COVIDSEG_NODE_STOW_URL=f"{url}/dicom-web",
                 COVIDSEG_NODE_DESTINATION=f"ORTHANC@127.0.0.1:{pacs_dicom}",
                 COVIDSEG_NODE_DONE_MAX="0"):  # no done record: the instance sent again is made and delivered again
        for round_ in (1, 2):
            assert store(port, "MODALITY", [source]).returncode == 0
            # 3 results x 2 destinations per round
            wait_for(lambda: len(events(spool, "result-delivered")) == 6 * round_ and not queued(spool, "outgoing"),
                     what=f"round {round_} delivered")
        stored = held(url)
    made = [r["ParticipantObjectID"] for r in events(spool, "result-made")]
    delivered = events(spool, "result-delivered")
    assert len(made) == 6 and len(set(made)) == 3  # the same three results, made twice
    by_sender = {}
    for r in delivered:
        by_sender.setdefault(r["EventOutcomeDescription"].split(" ")[0], []).append(r["ParticipantObjectID"])
    assert sorted(by_sender) == ["C-STORE", "STOW-RS"]
    for uids in by_sender.values():  # each sender delivered each result twice
        assert sorted(uids) == sorted(made)
    assert sorted(ds.SOPInstanceUID for ds in stored) == sorted(set(made))  # one instance per result
    assert {ds.Modality for ds in stored} == {"SEG", "OT", "SR"}
    for ds in stored:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not queued(spool, "failed")
