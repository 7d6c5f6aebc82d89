"""The PACS bridge against a real Orthanc (REST API, and its DICOMweb plugin) and the real service."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from app.pacs.__main__ import main as bridge_main
from tests.conftest import ROOT, fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.servers import free_port, orthanc, service

COVID, NORMAL = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")
RESULT_MODALITIES = ("SEG", "OT", "SR")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """One Orthanc with the DICOMweb plugin: its REST URL and its DICOMweb URL."""
    with orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as url:
        yield url, f"{url}/dicom-web"


@pytest.fixture(scope="module")
def live_service():
    with service() as url:
        yield url


def upload(rest: str, data: bytes) -> None:
    httpx.post(f"{rest}/instances", content=data, headers={"Content-Type": "application/dicom"}).raise_for_status()


def count(rest: str) -> int:
    return len(httpx.get(f"{rest}/instances").json())


def results_in(rest: str, study_uid: str) -> dict[str, list[str]]:
    """Result modality -> the source SOP Instance UIDs its instances reference, in one study."""
    hits = httpx.post(f"{rest}/tools/lookup", content=study_uid).json()
    study_id = next(x["ID"] for x in hits if x["Type"] == "Study")
    out: dict[str, list[str]] = {m: [] for m in RESULT_MODALITIES}
    for inst in httpx.get(f"{rest}/studies/{study_id}/instances").json():
        ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{rest}/instances/{inst['ID']}/file").content))
        if ds.Modality in ("SEG", "OT"):
            out[ds.Modality].append(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        elif ds.Modality == "SR":
            out["SR"] += [i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                          for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence
                          if i.ReferencedSOPClassUID != pydicom.uid.SegmentationStorage]
    return {k: sorted(v) for k, v in out.items()}


def run_bridge(where: list[str], service_url: str, state: Path, *extra: str) -> int:
    return bridge_main([*where, "--service-url", service_url, "--state-file", str(state), "--no-progress",
                        "--retries", "2", "--retry-wait", "0.05", *extra])


def table_count(out: str, row: str) -> int:
    return int(out.split(row)[1].split()[0])


def test_orthanc_rest_stores_each_result_once_and_keeps_pending_work(pacs, live_service, tmp_path, capsys):
    rest, _ = pacs
    where = ["--orthanc-url", rest]
    study_a, study_b = generate_uid(), generate_uid()
    sources = [
        make_cxr_dicom(COVID[0], "CR", "MONOCHROME1", study_uid=study_a, size=2048, pixel_spacing=0.14),
        make_cxr_dicom(NORMAL[0], "DX", "MONOCHROME2", compress=RLELossless, study_uid=study_a),
        make_cxr_dicom(COVID[1], "DX", "MONOCHROME2", compress=JPEG2000Lossless, study_uid=study_b),
    ]
    for data in sources:
        upload(rest, data)
    state = tmp_path / "state.json"
    assert run_bridge(where, live_service, state, "--study", study_a) == 0
    assert run_bridge(where, live_service, state, "--study", study_b) == 0
    for study in (study_a, study_b):
        expected = sorted(read(d).SOPInstanceUID for d in sources if read(d).StudyInstanceUID == study)
        assert results_in(rest, study) == {m: expected for m in RESULT_MODALITIES}
    capsys.readouterr()

    before = count(rest)
    assert run_bridge(where, live_service, state, "--study", study_a) == 0  # a second run adds nothing
    assert count(rest) == before and table_count(capsys.readouterr().out, "already processed") == 2

    # the service down: the new instance stays pending, nothing is lost or marked done
    late = make_cxr_dicom(COVID[0], "CR", study_uid=study_b)
    upload(rest, late)
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(where, dead, state, "--study", study_b) == 3
    assert "cannot reach the service" in capsys.readouterr().err
    assert read(late).SOPInstanceUID not in json.loads(state.read_text())["processed"]

    # the service back: the pending instance is done, and only it
    assert run_bridge(where, live_service, state, "--study", study_b) == 0
    assert results_in(rest, study_b)["SEG"].count(read(late).SOPInstanceUID) == 1
    assert count(rest) == before + 1 + 3


def test_dicomweb_with_the_state_file_lost_adds_nothing_and_skips_non_chest(pacs, live_service, tmp_path, capsys):
    rest, dicomweb = pacs
    where = ["--dicomweb-url", dicomweb]
    study = generate_uid()
    chest = [make_cxr_dicom(COVID[0], "DX", study_uid=study, compress=RLELossless),
             make_cxr_dicom(NORMAL[1], "CR", "MONOCHROME1", study_uid=study, size=1024, view=None)]
    knee = make_cxr_dicom(NORMAL[0], "DX", study_uid=study, body_part="KNEE", view="LL")
    raw = make_cxr_dicom(NORMAL[0], "DX", study_uid=study, presentation_intent="FOR PROCESSING")
    for data in (*chest, knee, raw):
        upload(rest, data)
    state = tmp_path / "state.json"
    assert run_bridge(where, live_service, state, "--study", study) == 0
    out = capsys.readouterr().out
    assert table_count(out, "processed now") == 2 and table_count(out, "skipped (selection rules)") == 2
    expected = sorted(read(d).SOPInstanceUID for d in chest)
    assert results_in(rest, study) == {m: expected for m in RESULT_MODALITIES}
    skipped = json.loads(state.read_text())["skipped"]
    assert "KNEE" in skipped[read(knee).SOPInstanceUID] and "FOR PROCESSING" in skipped[read(raw).SOPInstanceUID]

    before = count(rest)
    state.unlink()  # lost: the PACS itself says what is done
    assert run_bridge(where, live_service, state, "--study", study) == 0
    out = capsys.readouterr().out
    assert count(rest) == before
    assert table_count(out, "processed now") == 2 and table_count(out, "results already in the PACS") == 6


def test_watch_processes_what_arrives_until_stopped(pacs, live_service, tmp_path):
    rest, dicomweb = pacs
    study = generate_uid()
    env = {**os.environ, "COVIDSEG_PACS_DICOMWEB_URL": dicomweb, "COVIDSEG_PACS_SERVICE_URL": live_service,
           "COVIDSEG_PACS_STATE_FILE": str(tmp_path / "state.json"), "COVIDSEG_PACS_OUTPUTS": "seg"}
    proc = subprocess.Popen([sys.executable, "-m", "app.pacs", "--watch", "--interval", "0.5", "--study", study,
                             "--no-progress"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(2)
        arriving = make_cxr_dicom(COVID[0], "CR", study_uid=study)
        upload(rest, arriving)
        deadline = time.time() + 120
        while time.time() < deadline and not httpx.post(f"{rest}/tools/lookup", content=study).json():
            time.sleep(0.5)
        while time.time() < deadline and results_in(rest, study)["SEG"] != [read(arriving).SOPInstanceUID]:
            time.sleep(0.5)
        assert results_in(rest, study)["SEG"] == [read(arriving).SOPInstanceUID]
        assert proc.poll() is None  # still watching
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert read(arriving).SOPInstanceUID not in output and "DOE" not in output


def test_bad_instance_is_skipped_and_recorded(pacs, live_service, tmp_path, caplog):
    rest, _ = pacs
    study = generate_uid()
    ds = read(make_cxr_dicom(COVID[0], "CR", study_uid=study))
    ds.NumberOfFrames = 2  # multi-frame: the service refuses it with 422
    ds.PixelData = ds.PixelData * 2
    buf = io.BytesIO()
    ds.save_as(buf)
    upload(rest, buf.getvalue())
    good = make_cxr_dicom(COVID[0], "DX", study_uid=study)
    upload(rest, good)
    state = tmp_path / "state.json"
    with caplog.at_level(logging.INFO, logger="app"):
        assert run_bridge(["--orthanc-url", rest], live_service, state, "--study", study, "--outputs", "seg") == 0
    saved = json.loads(state.read_text())
    assert "multi-frame" in saved["failed"][ds.SOPInstanceUID]  # the service's detail, in the state file
    # the log names the refusal by status and code; the detail, which may quote the file, stays out
    assert "refused by the service (422 multi_frame)" in caplog.text and "multi-frame" not in caplog.text
    assert read(good).SOPInstanceUID in saved["processed"]
    assert results_in(rest, study)["SEG"] == [read(good).SOPInstanceUID]


def test_pacs_down_is_reported(live_service, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(["--dicomweb-url", dead], live_service, tmp_path / "s.json") == 3
    assert "cannot list instances in DICOMweb" in capsys.readouterr().err
