"""The PACS bridge against a real Orthanc server and the real service, both on loopback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from app.pacs.__main__ import main as bridge_main
from tests.conftest import ROOT, fixture_images, model_under_test
from tests.dicom_fixtures import make_cxr_dicom, read

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], ready_url: str, **popen):
    """A server process for the duration of the block, once ``ready_url`` answers 200."""
    proc = subprocess.Popen(args, **popen)
    try:
        wait_for(ready_url, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds}s")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    assert os.path.exists(ORTHANC), "Orthanc is not installed: apt-get install orthanc (see README)"
    work = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {"Name": "covidseg-test", "HttpPort": port, "DicomServerEnabled": False,
              "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
              "StorageCompression": False}
    (work / "orthanc.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}"
    with running([ORTHANC, str(work / "orthanc.json")], f"{url}/system", stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL):
        yield url


@pytest.fixture(scope="module")
def live_service():
    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "warning"}
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], f"{url}/ready",
                 env=env, cwd=ROOT):
        yield url


def upload(orthanc: str, data: bytes) -> str:
    r = httpx.post(f"{orthanc}/instances", content=data, headers={"Content-Type": "application/dicom"})
    r.raise_for_status()
    return r.json()["ID"]


def study_outputs(orthanc: str, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """SEG and SC instances stored in a study, read back from Orthanc."""
    study_ids = httpx.post(f"{orthanc}/tools/lookup", content=study_uid).json()
    study_id = next(x["ID"] for x in study_ids if x["Type"] == "Study")
    out: dict[str, list[pydicom.Dataset]] = {"SEG": [], "OT": []}
    for inst in httpx.get(f"{orthanc}/studies/{study_id}/instances").json():
        ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc}/instances/{inst['ID']}/file").content))
        if ds.Modality in out:
            out[ds.Modality].append(ds)
    return out


def run_bridge(orthanc: str, service: str, state: Path, *extra: str) -> int:
    return bridge_main(["--orthanc-url", orthanc, "--service-url", service, "--state-file", str(state),
                        "--no-progress", "--retries", "2", "--retry-wait", "0.05", *extra])


def test_bridge_stores_seg_and_sc_once_and_keeps_pending_work(orthanc, live_service, tmp_path, capsys):
    covid, normal = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")
    study_a, study_b = generate_uid(), generate_uid()
    sources = [
        make_cxr_dicom(covid[0], "CR", "MONOCHROME1", study_uid=study_a),
        make_cxr_dicom(normal[0], "DX", "MONOCHROME2", compress=RLELossless, study_uid=study_a),
        make_cxr_dicom(covid[1], "DX", "MONOCHROME2", compress=JPEG2000Lossless, study_uid=study_b),
    ]
    for data in sources:
        upload(orthanc, data)
    state = tmp_path / "state.json"

    assert run_bridge(orthanc, live_service, state) == 0
    assert "processed now" in capsys.readouterr().out
    for study in (study_a, study_b):
        expected = {read(d).SOPInstanceUID for d in sources if read(d).StudyInstanceUID == study}
        outputs = study_outputs(orthanc, study)
        seg_refs = [s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in outputs["SEG"]]
        sc_refs = [s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in outputs["OT"]]
        assert sorted(seg_refs) == sorted(expected) and sorted(sc_refs) == sorted(expected)
        assert all(s.StudyInstanceUID == study for s in outputs["SEG"] + outputs["OT"])

    count = len(httpx.get(f"{orthanc}/instances").json())
    assert run_bridge(orthanc, live_service, state) == 0  # second run adds nothing
    assert len(httpx.get(f"{orthanc}/instances").json()) == count
    assert "already processed              3" in capsys.readouterr().out

    # service down: the new instance stays pending, nothing is lost or marked done
    late = make_cxr_dicom(covid[0], "CR", study_uid=study_b)
    upload(orthanc, late)
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(orthanc, dead, state) == 3
    out = capsys.readouterr().out
    assert "pending (retry next run)" in out and out.split("pending (retry next run)")[1].split()[0] == "1"
    assert read(late).SOPInstanceUID not in json.loads(state.read_text())["processed"]
    assert len(httpx.get(f"{orthanc}/instances").json()) == count + 1

    # service back: the pending instance is done, and only it
    assert run_bridge(orthanc, live_service, state) == 0
    refs = [s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in study_outputs(orthanc, study_b)["SEG"]]
    assert refs.count(read(late).SOPInstanceUID) == 1
    assert len(httpx.get(f"{orthanc}/instances").json()) == count + 3


def test_bad_instance_is_skipped_and_recorded(orthanc, live_service, tmp_path):
    covid = fixture_images("Val", "COVID-19")[0]
    study = generate_uid()
    ds = read(make_cxr_dicom(covid, "CR", study_uid=study))
    ds.NumberOfFrames = 2  # multi-frame: the service refuses it with 422
    ds.PixelData = ds.PixelData * 2
    buf = io.BytesIO()
    ds.save_as(buf)
    upload(orthanc, buf.getvalue())
    good = make_cxr_dicom(covid, "DX", study_uid=study)
    upload(orthanc, good)
    state = tmp_path / "state.json"
    assert run_bridge(orthanc, live_service, state, "--study", study) == 0
    saved = json.loads(state.read_text())
    assert ds.SOPInstanceUID in saved["failed"] and "multi-frame" in saved["failed"][ds.SOPInstanceUID]
    assert read(good).SOPInstanceUID in saved["processed"]
    assert len(study_outputs(orthanc, study)["SEG"]) == 1


def test_orthanc_down_is_reported(tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_bridge(dead, dead, tmp_path / "s.json") == 3
    assert "cannot list instances" in capsys.readouterr().err
