"""The node and the input judgement, over real DIMSE (dcmtk's storescu): what the model cannot judge is not
segmented, nothing is sent or kept for it, and the audit log says why."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.node.test_node import queued, wait_for, write
from tests.node.test_node_audit import events
from tests.servers import free_port, node, store

COVID = fixture_images("Val", "COVID-19")
SECRET_NAME = "HIDDEN^NAME"


def blank_cr(tmp_path: Path) -> bytes:
    png = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256), 200, np.uint8)).save(png)
    return make_cxr_dicom(png, "CR", size=1024, patient_name=SECRET_NAME)


def said_monochrome1(path: Path) -> bytes:
    """MONOCHROME2 pixels under a MONOCHROME1 header: the picture is a negative."""
    ds = read(make_cxr_dicom(path, "CR", size=1024, window=False, patient_name=SECRET_NAME))
    ds.PhotometricInterpretation = "MONOCHROME1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_images_the_model_cannot_judge_are_audited_and_neither_segmented_sent_nor_kept(tmp_path: Path):
    sent = {"blank": write(tmp_path, "blank.dcm", blank_cr(tmp_path)),
            "negative": write(tmp_path, "negative.dcm", said_monochrome1(COVID[0])),
            "chest": write(tmp_path, "chest.dcm", make_cxr_dicom(COVID[1], "CR", size=1024))}
    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "node.log"
    with node(spool, port, log, COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        assert store(port, "MODALITY", list(sent.values())).returncode == 0
        wait_for(lambda: len(events(spool, "instance-not-judged")) == 2 and len(queued(spool, "outgoing")) == 3,
                 what="two refused, the chest's three results queued")
    assert not queued(spool, "incoming") and not queued(spool, "failed")
    chest_uid = read(sent["chest"].read_bytes()).SOPInstanceUID
    assert {pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID
            for p in queued(spool, "outgoing") if pydicom.dcmread(p).Modality != "SR"} == {chest_uid}
    refused = {r["ParticipantObjectID"]: r for r in events(spool, "instance-not-judged")}
    blank, negative = (refused[read(sent[k].read_bytes()).SOPInstanceUID] for k in ("blank", "negative"))
    assert blank["EventOutcomeDescription"].startswith("not segmented (no_contrast): ")
    assert negative["EventOutcomeDescription"].startswith("not segmented (appears_inverted): ")
    assert "PhotometricInterpretation" in negative["EventOutcomeDescription"]
    text = log.read_text()
    assert "not segmented: no_contrast" in text and "not segmented: appears_inverted" in text
    assert SECRET_NAME.split("^")[0] not in text and "Traceback" not in text
