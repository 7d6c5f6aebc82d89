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
import numpy as np
import pydicom
import pytest
from PIL import Image
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


@pytest.fixture
def http_requests(monkeypatch) -> list[httpx.Request]:
    """Every request this process sends with httpx from now on: the in-process bridge's to the PACS and
    the service, and the test's own."""
    seen: list[httpx.Request] = []
    send = httpx.Client.send

    def recording(self, request: httpx.Request, *args, **kwargs) -> httpx.Response:
        seen.append(request)
        return send(self, request, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", recording)
    return seen


def orthanc_id(rest: str, sop_uid: str) -> str:
    hits = httpx.post(f"{rest}/tools/lookup", content=sop_uid).json()
    return next(hit["ID"] for hit in hits if hit["Type"] == "Instance")


def files_fetched(requests: list[httpx.Request], ids: dict[str, str]) -> list[str]:
    """The SOP Instance UIDs (keys of ``ids``, Orthanc's id of each its value) whose file ``requests``
    fetched, by Orthanc's ``/instances/{id}/file`` or a WADO-RS ``.../instances/{uid}``."""
    by_path_end = {**{f"/instances/{oid}/file": uid for uid, oid in ids.items()},
                   **{f"/instances/{uid}": uid for uid in ids}}
    return sorted(by_path_end[end] for r in requests if r.method == "GET"
                  for end in by_path_end if r.url.path.endswith(end))


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
    assert count(rest) == before and table_count(capsys.readouterr().out, "already done (state file)") == 2

    # the service down: the new instance stays pending, nothing is lost or marked done
    late = make_cxr_dicom(COVID[0], "CR", study_uid=study_b)
    upload(rest, late)
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(where, dead, state, "--study", study_b) == 3
    assert "cannot reach the service" in capsys.readouterr().err
    assert read(late).SOPInstanceUID not in json.loads(state.read_text())["results"]

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
    assert table_count(out, "results stored now") == 6 and table_count(out, "skipped (selection rules, judgement)") == 2
    expected = sorted(read(d).SOPInstanceUID for d in chest)
    assert results_in(rest, study) == {m: expected for m in RESULT_MODALITIES}
    skipped = json.loads(state.read_text())["skipped"]
    assert "KNEE" in skipped[read(knee).SOPInstanceUID] and "FOR PROCESSING" in skipped[read(raw).SOPInstanceUID]

    before = count(rest)
    state.unlink()  # lost: the PACS itself says what is done
    assert run_bridge(where, live_service, state, "--study", study) == 0
    out = capsys.readouterr().out
    assert count(rest) == before
    assert table_count(out, "results stored now") == 0 and table_count(out, "results already in the PACS") == 6
    assert table_count(out, "already done (state file)") == 0
    assert table_count(out, "images downloaded") == 0  # every result found: no image fetched


def test_another_threshold_makes_its_own_results(pacs, live_service, tmp_path, capsys):
    """What is done is keyed by model, threshold and kind, as the result UIDs are."""
    rest, _ = pacs
    study = generate_uid()
    source = make_cxr_dicom(COVID[0], "CR", study_uid=study)
    upload(rest, source)
    state, where = tmp_path / "state.json", ["--orthanc-url", rest, "--study", study, "--outputs", "seg"]
    assert run_bridge(where, live_service, state, "--threshold", "0.5") == 0
    capsys.readouterr()
    assert run_bridge(where, live_service, state, "--threshold", "0.25") == 0
    out = capsys.readouterr().out
    assert table_count(out, "already done (state file)") == 0 and table_count(out, "results stored now") == 1
    assert results_in(rest, study)["SEG"] == [read(source).SOPInstanceUID] * 2  # one per threshold
    thresholds = sorted(r["threshold"] for r in json.loads(state.read_text())["results"][read(source).SOPInstanceUID]
                        .values())
    assert thresholds == [0.25, 0.5]
    assert run_bridge(where, live_service, state, "--threshold", "0.25") == 0
    assert table_count(capsys.readouterr().out, "already done (state file)") == 1
    assert results_in(rest, study)["SEG"] == [read(source).SOPInstanceUID] * 2


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
    assert read(good).SOPInstanceUID in saved["results"]
    assert results_in(rest, study)["SEG"] == [read(good).SOPInstanceUID]


def test_pacs_down_is_reported(live_service, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(["--dicomweb-url", dead], live_service, tmp_path / "s.json") == 3
    assert "cannot list instances in DICOMweb" in capsys.readouterr().err


@pytest.mark.parametrize("api", ["--orthanc-url", "--dicomweb-url"])
def test_the_pacs_is_asked_only_for_the_selected_modalities(pacs, live_service, tmp_path, monkeypatch, api):
    """COVIDSEG_SELECT_MODALITIES=DX: the CR of the study is never listed nor downloaded (so not even
    recorded as skipped), and only the DX gets results."""
    from app.core.config import get_settings

    rest, dicomweb = pacs
    study = generate_uid()
    cr, dx = make_cxr_dicom(COVID[0], "CR", study_uid=study), make_cxr_dicom(NORMAL[0], "DX", study_uid=study)
    for data in (cr, dx):
        upload(rest, data)
    monkeypatch.setenv("COVIDSEG_SELECT_MODALITIES", "DX")
    get_settings.cache_clear()  # the bridge reads the settings once per process
    try:
        state = tmp_path / "state.json"
        where = [api, rest if api == "--orthanc-url" else dicomweb]
        assert run_bridge(where, live_service, state, "--study", study, "--outputs", "seg") == 0
    finally:
        get_settings.cache_clear()
    saved = json.loads(state.read_text())
    assert read(cr).SOPInstanceUID not in json.dumps(saved)
    assert results_in(rest, study)["SEG"] == [read(dx).SOPInstanceUID]


@pytest.mark.parametrize("api", ["--orthanc-url", "--dicomweb-url"])
def test_a_knee_or_a_lateral_view_is_skipped_without_its_file_being_downloaded(pacs, live_service, tmp_path, capsys,
                                                                                caplog, http_requests, api):
    """The rules are applied to what the PACS says of each instance (Orthanc's tags, QIDO-RS includefield):
    only the chest X-ray's file is fetched, the knee and the lateral CR are recorded as skipped unfetched."""
    rest, dicomweb = pacs
    study = generate_uid()
    chest = make_cxr_dicom(COVID[0], "CR", study_uid=study)
    knee = make_cxr_dicom(NORMAL[0], "CR", study_uid=study, body_part="KNEE", view=None)
    lateral = make_cxr_dicom(NORMAL[1], "CR", "MONOCHROME1", study_uid=study, view="LL")
    for data in (chest, knee, lateral):
        upload(rest, data)
    ids = {read(d).SOPInstanceUID: orthanc_id(rest, read(d).SOPInstanceUID) for d in (chest, knee, lateral)}
    state, where = tmp_path / "state.json", [api, rest if api == "--orthanc-url" else dicomweb]
    del http_requests[:]
    with caplog.at_level(logging.INFO, logger="app"):
        assert run_bridge(where, live_service, state, "--study", study, "--outputs", "seg") == 0
    assert files_fetched(http_requests, ids) == [read(chest).SOPInstanceUID]
    out = capsys.readouterr().out
    assert table_count(out, "images downloaded") == 1 and table_count(out, "skipped (selection rules, judgement)") == 2
    skipped = json.loads(state.read_text())["skipped"]
    assert "body part KNEE" in skipped[read(knee).SOPInstanceUID] and "view LL" in skipped[read(lateral).SOPInstanceUID]
    assert "skipped an instance before download: body part KNEE" in caplog.text
    assert "skipped an instance before download: view LL" in caplog.text
    assert not any(uid in caplog.text for uid in ids)  # the reason, never the instance
    assert results_in(rest, study)["SEG"] == [read(chest).SOPInstanceUID]


def metric(service_url: str, name: str) -> float:
    """One sample of the service's Prometheus metrics."""
    for line in httpx.get(f"{service_url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def stored_results(rest: str, study_uid: str) -> dict[tuple[str, str], bytes]:
    """(source SOP Instance UID, result modality) -> the file Orthanc holds, in one study."""
    hits = httpx.post(f"{rest}/tools/lookup", content=study_uid).json()
    study_id = next(x["ID"] for x in hits if x["Type"] == "Study")
    out = {}
    for inst in httpx.get(f"{rest}/studies/{study_id}/instances").json():
        data = httpx.get(f"{rest}/instances/{inst['ID']}/file").content
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.Modality in RESULT_MODALITIES:
            source = source_of_result(ds)
            out[(source, ds.Modality)] = data
    return out


def source_of_result(ds: pydicom.Dataset) -> str:
    """The source image a result references (SEG and SC by Source Image Sequence, the SR by its evidence)."""
    if ds.Modality in ("SEG", "OT"):
        return ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    return next(i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence
                if i.ReferencedSOPClassUID != pydicom.uid.SegmentationStorage)


def test_each_instance_is_one_request_and_one_model_run_and_stores_what_each_format_gives(
        pacs, live_service, tmp_path, http_requests):
    """All three results of an instance come from one POST /segment (format=dicom, multipart): the service's
    metrics count one image per instance through the model, and what Orthanc stores is byte for byte what
    format=dicom-seg, dicom-sc and dicom-sr give for the same file."""
    rest, _ = pacs
    study = generate_uid()
    sources = [make_cxr_dicom(COVID[0], "CR", "MONOCHROME1", study_uid=study, size=1024, pixel_spacing=0.14),
               make_cxr_dicom(NORMAL[0], "DX", compress=RLELossless, study_uid=study)]
    for data in sources:
        upload(rest, data)
    images, runs = metric(live_service, "covidseg_images_total"), metric(live_service,
                                                                         "covidseg_inference_batch_size_count")
    del http_requests[:]
    assert run_bridge(["--orthanc-url", rest], live_service, tmp_path / "state.json", "--study", study) == 0
    asked = [r for r in http_requests if r.method == "POST" and r.url.path == "/segment"]
    assert len(asked) == len(sources)
    assert all(r.url.params["format"] == "dicom" and r.url.params["outputs"] == "seg,sc,sr" for r in asked)
    assert metric(live_service, "covidseg_images_total") - images == len(sources)  # one model run each
    assert metric(live_service, "covidseg_inference_batch_size_count") - runs == len(sources)

    stored = stored_results(rest, study)
    assert len(stored) == 3 * len(sources)
    for data in sources:
        for kind, modality in (("seg", "SEG"), ("sc", "OT"), ("sr", "SR")):
            alone = httpx.post(f"{live_service}/segment", params={"format": f"dicom-{kind}"}, timeout=120,
                               files={"file": ("image.dcm", data, "application/dicom")})
            assert alone.status_code == 200
            assert stored[(read(data).SOPInstanceUID, modality)] == alone.content, kind


def test_an_instance_the_model_cannot_judge_is_recorded_as_skipped_and_nothing_is_stored(pacs, live_service,
                                                                                        tmp_path, capsys):
    rest, _ = pacs
    study = generate_uid()
    blank_png = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256), 90, np.uint8)).save(blank_png)
    blank = make_cxr_dicom(blank_png, "CR", study_uid=study, size=1024)
    good = make_cxr_dicom(COVID[1], "DX", study_uid=study)
    for data in (blank, good):
        upload(rest, data)
    before = count(rest)
    state = tmp_path / "state.json"
    assert run_bridge(["--orthanc-url", rest], live_service, state, "--study", study) == 0
    out = capsys.readouterr().out
    assert table_count(out, "skipped (selection rules, judgement)") == 1
    saved = json.loads(state.read_text())
    record = saved["not_judged"][read(blank).SOPInstanceUID]
    assert record["reason"].startswith("no_contrast: ") and len(record["model_sha256"]) == 64
    assert read(blank).SOPInstanceUID not in saved.get("failed", {})
    assert results_in(rest, study)["SEG"] == [read(good).SOPInstanceUID]  # nothing stored for the blank one
    assert count(rest) == before + 3
    assert run_bridge(["--orthanc-url", rest], live_service, state, "--study", study) == 0  # a rerun: nothing
    assert count(rest) == before + 3
