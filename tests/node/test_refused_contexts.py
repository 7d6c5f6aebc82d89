"""A presentation context the node refuses (a SOP class it does not store) is logged, audited and counted:
a real node, a mammogram sent by dcmtk's storescu (which proposes every storage class) and by a pynetdicom
SCU proposing the mammography class alone."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE

from tests.conftest import fixture_images
from tests.dicom_fixtures import MAMMOGRAPHY, make_cxr_dicom, mammogram, read
from tests.node.test_node import queued, write
from tests.node.test_node_audit import events, scrape
from tests.servers import free_port, node, store

COVID = fixture_images("Val", "COVID-19")
MAMMOGRAPHY_NAME = "Digital Mammography X-Ray Image Storage - For Presentation"


def associate_offering_only(port: int, sop_class: str) -> int:
    """An association proposing ``sop_class`` alone: the contexts the node accepted in it (pynetdicom aborts
    an association the acceptor accepted without any context)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDSEG")
    if assoc.is_established:
        assoc.release()
    return len(assoc.accepted_contexts)


def test_a_refused_sop_class_is_logged_audited_and_counted(tmp_path: Path):
    spool, log, port, metrics_port = tmp_path / "spool", tmp_path / "node.log", free_port(), free_port()
    mammo = write(tmp_path, "mg.dcm", mammogram(COVID[0], patient_name="SECRET^PATIENT"))
    chest = write(tmp_path, "cxr.dcm", make_cxr_dicom(COVID[1], size=256))
    with node(spool, port, log, COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1",
              COVIDSEG_NODE_METRICS_PORT=str(metrics_port)):
        # 1. a pynetdicom SCU offering mammography alone: accepted, with nothing it can send
        assert associate_offering_only(port, MAMMOGRAPHY) == 0
        # 2. storescu offers every storage class: CR and DX accepted, the mammogram cannot be sent
        sent = store(port, "MODALITY", [mammo])
        assert sent.returncode != 0 and "No presentation context" in sent.stdout + sent.stderr
        # 3. an ordinary chest image: its association has refused contexts as well (storescu), and goes through
        assert store(port, "MODALITY", [chest]).returncode == 0
        metrics = scrape(metrics_port)
    assert events(spool, "instance-queued") and not queued(spool, "failed")  # the chest image went through
    refused = events(spool, "presentation-contexts-refused")
    assert len(refused) == 3 == len(events(spool, "association-accepted")) - 1  # - 1: the readiness C-ECHO
    alone, by_storescu = refused[0], refused[1:]
    assert alone["RefusedSOPClassUIDs"] == [MAMMOGRAPHY]
    assert (alone["SourceUserID"], alone["SourceNetworkAccessPointID"], alone["DestinationUserID"],
            alone["DestinationPort"]) == ("MODALITY", "127.0.0.1", "COVIDSEG", port)
    assert (alone["EventID"], alone["EventTypeCode"], alone["EventOutcomeIndicator"]) == ("110113", "110126", 4)
    assert "abstract_syntax_not_supported" in alone["EventOutcomeDescription"]
    assert "0 accepted" in alone["EventOutcomeDescription"]
    for record in by_storescu:  # many classes refused, the mammography class among them, CR and DX not
        assert MAMMOGRAPHY in record["RefusedSOPClassUIDs"] and len(record["RefusedSOPClassUIDs"]) > 10
        assert read(chest.read_bytes()).SOPClassUID not in record["RefusedSOPClassUIDs"]
    counted = metrics[("covidseg_node_presentation_contexts_refused_total",
                       (("reason", "abstract_syntax_not_supported"),))]
    assert counted >= 1 + 2 * 10
    text = log.read_text()
    # the association with nothing accepted is a warning, named by SOP class name; no UID in the log
    assert f"WARNING app.node: association from MODALITY at 127.0.0.1: 1 presentation context(s) refused " \
           f"(abstract syntax not supported): {MAMMOGRAPHY_NAME}" in text
    assert "INFO app.node: association from MODALITY at 127.0.0.1:" in text  # storescu's, with CR/DX accepted
    assert MAMMOGRAPHY not in text and "SECRET" not in text
