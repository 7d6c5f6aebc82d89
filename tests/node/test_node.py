"""The DICOM node over real DIMSE on loopback: dcmtk's storescu/echoscu send, a real Orthanc receives."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, SegmentationStorage, generate_uid

from tests.conftest import fixture_images
from tests.dicom_fixtures import make_cxr_dicom, read, rle_overrunning_the_frame
from tests.servers import ROOT as PROJECT
from tests.servers import echo, free_port, node, orthanc, store

COVID, NORMAL = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")
SECRET_NAME, SECRET_ID = "SECRET^PATIENT", "SECRET-PID-77"


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def wait_for(check, seconds: float = 240, what: str = "condition") -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {seconds}s")


def queued(spool: Path, folder: str) -> list[Path]:
    return sorted((spool / folder).glob("*.dcm"))


def results_by_source(url: str, study: str | None = None) -> dict[str, list[str]]:
    """Source SOP Instance UID -> the modalities of the results in Orthanc that reference it
    (all of them in ``study`` when given)."""
    found: dict[str, list[str]] = {}
    for oid in httpx.get(f"{url}/instances").json():
        ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{url}/instances/{oid}/file").content))
        if ds.Modality in ("SEG", "OT", "SR"):
            assert study is None or ds.StudyInstanceUID == study
            if ds.Modality == "SR":  # its evidence: the source image and the SEG
                refs = [i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                        for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence
                        if i.ReferencedSOPClassUID != SegmentationStorage]
            else:
                refs = [ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
            for ref in refs:
                found.setdefault(ref, []).append(ds.Modality)
    return {k: sorted(v) for k, v in found.items()}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    study = generate_uid()
    folder = tmp_path / "send"
    folder.mkdir()
    kw = dict(study_uid=study, patient_name=SECRET_NAME, patient_id=SECRET_ID)
    return {
        "cr": write(folder, "cr.dcm", make_cxr_dicom(COVID[0], "CR", "MONOCHROME1", size=2048, bits=12,
                                                     pixel_spacing=0.139, compress=JPEGLSLossless, **kw)),
        "dx": write(folder, "dx.dcm", make_cxr_dicom(COVID[1], "DX", size=1024, bits=14, imager_pixel_spacing=0.15,
                                                     compress=JPEG2000Lossless, view="AP", **kw)),
        "knee": write(folder, "knee.dcm", make_cxr_dicom(NORMAL[0], "DX", body_part="KNEE", view="LL", **kw)),
        "raw": write(folder, "raw.dcm", make_cxr_dicom(NORMAL[1], "DX", presentation_intent="FOR PROCESSING", **kw)),
        "late": write(folder, "late.dcm", make_cxr_dicom(NORMAL[0], "CR", **kw)),
    }


def test_echo_and_unknown_callers_are_refused(tmp_path: Path):
    port = free_port()
    with node(tmp_path / "spool", port, tmp_path / "node.log", COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        assert echo(port, "MODALITY").returncode == 0
        refused = echo(port, "STRANGER")
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        sent = store(port, "STRANGER", [write(tmp_path, "a.dcm", make_cxr_dicom(COVID[0]))])
        assert sent.returncode != 0
        assert not list((tmp_path / "spool" / "incoming").iterdir())


def health(spool: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.node.health", "--spool-dir", str(spool), *extra],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT)


def test_health_sees_the_workers_not_only_the_port(tmp_path: Path):
    spool = tmp_path / "spool"
    assert health(spool).returncode == 1  # never started
    with node(spool, free_port(), tmp_path / "node.log", COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        alive = health(spool)
        assert alive.returncode == 0 and alive.stdout.startswith("healthy"), alive.stdout
    for worker in ("segmenter", "deliverer"):  # as if both had stopped or hung 20 minutes ago
        os.utime(spool / f".alive-{worker}", (time.time() - 1200,) * 2)
    stale = health(spool)
    assert stale.returncode == 1 and stale.stdout.startswith("unhealthy: last alive segmenter 12")
    assert health(spool, "--max-age", "3600").returncode == 0


def test_an_image_that_cannot_be_segmented_is_kept_aside_with_the_reason(tmp_path: Path):
    ds = read(make_cxr_dicom(COVID[0]))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    buf = io.BytesIO()
    ds.save_as(buf)
    sent = [write(tmp_path, "multi.dcm", buf.getvalue()),
            write(tmp_path, "crash.dcm", rle_overrunning_the_frame(COVID[1])),  # panics the RLE decoder
            write(tmp_path, "good.dcm", make_cxr_dicom(NORMAL[0]))]
    port, spool = free_port(), tmp_path / "spool"
    with node(spool, port, tmp_path / "node.log", COVIDSEG_NODE_DESTINATION="PACS@127.0.0.1:1"):
        assert store(port, "MODALITY", sent).returncode == 0
        # the good image after the bad ones is still segmented (its results wait for the destination)
        wait_for(lambda: len(queued(spool, "failed")) == 2 and queued(spool, "outgoing"), what="set aside")
    assert not queued(spool, "incoming")
    reasons = sorted(p.read_text() for p in (spool / "failed").glob("*.reason.txt"))
    assert any("multi-frame" in r for r in reasons) and any("pixel data is truncated or corrupt" in r for r in reasons)
    log = (tmp_path / "node.log").read_text()  # codes only: a message may quote the file's values
    assert "could not be segmented (multi_frame)" in log and "could not be segmented (corrupt_dicom)" in log
    assert "multi-frame DICOM" not in log and "truncated or corrupt" not in log
    kept = {read(p.read_bytes()).SOPInstanceUID for p in queued(spool, "failed")}
    assert kept == {read(p.read_bytes()).SOPInstanceUID for p in sent[:2]}  # nothing lost


def test_results_by_stow_rs(tmp_path: Path):
    port = free_port()
    source = make_cxr_dicom(COVID[1], "DX", size=512)
    with orthanc(tmp_path / "orthanc", dicomweb=True) as url, \
            node(tmp_path / "spool", port, tmp_path / "node.log", COVIDSEG_NODE_STOW_URL=f"{url}/dicom-web",
                 COVIDSEG_NODE_OUTPUTS="seg,sr"):
        assert store(port, "MODALITY", [write(tmp_path, "dx.dcm", source)]).returncode == 0
        wait_for(lambda: results_by_source(url).get(read(source).SOPInstanceUID) == ["SEG", "SR"], what="STOW-RS")
        assert not queued(tmp_path / "spool", "outgoing")


def test_queues_while_the_destination_is_down_and_delivers_each_result_once(tmp_path: Path, sources):
    spool, log, pacs_dir = tmp_path / "spool", tmp_path / "node.log", tmp_path / "orthanc"
    port, pacs_http, pacs_dicom = free_port(), free_port(), free_port()
    env = {"COVIDSEG_NODE_DESTINATION": f"ORTHANC@127.0.0.1:{pacs_dicom}"}
    with node(spool, port, log, **env):
        # 1. the PACS is down: the chest images are acknowledged, segmented and their results queued
        sent = store(port, "MODALITY", [sources[k] for k in ("cr", "dx", "knee", "raw")])
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(queued(spool, "outgoing")) == 6 and not queued(spool, "incoming"), what="6 results queued")
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in queued(spool, "outgoing"))
        # 2. the PACS comes up: everything queued arrives, once
        with orthanc(pacs_dir, pacs_http, pacs_dicom) as url:
            wait_for(lambda: not queued(spool, "outgoing"), what="queue emptied")
            delivered = results_by_source(url)
    # 3. the PACS is down again, one more image arrives, and the node stops with its results queued
    with node(spool, port, log, **env):
        assert store(port, "MODALITY", [sources["late"]]).returncode == 0
        wait_for(lambda: len(queued(spool, "outgoing")) == 3, what="late results queued")
    # 4. the node restarts with a non-empty queue and the PACS up: the rest is delivered
    with orthanc(pacs_dir, pacs_http, pacs_dicom) as url, node(spool, port, log, **env):
        wait_for(lambda: not queued(spool, "outgoing"), what="queue emptied after restart")
        final = results_by_source(url, study=str(read(sources["cr"].read_bytes()).StudyInstanceUID))
    uid = {k: read(p.read_bytes()).SOPInstanceUID for k, p in sources.items()}
    assert delivered == {uid["cr"]: ["OT", "SEG", "SR"], uid["dx"]: ["OT", "SEG", "SR"]}
    assert final == {**delivered, uid["late"]: ["OT", "SEG", "SR"]}  # knee and raw image skipped, none twice
    assert not queued(spool, "failed")

    text = log.read_text()
    assert "skipped an instance: body part KNEE" in text and "FOR PROCESSING" in text
    assert "destination unreachable" in text
    for secret in (SECRET_NAME.split("^")[0], SECRET_ID, "cr.dcm", *uid.values(),
                   str(read(sources["cr"].read_bytes()).StudyInstanceUID)):
        assert secret not in text, secret


def test_orthanc_routes_to_the_node_with_the_shipped_lua_script(tmp_path: Path):
    """What the compose `pacs` profile sets up, with its own Orthanc settings and Lua script: Orthanc
    routes CR/DX to the node, the node sends the results back to Orthanc."""
    import json

    import yaml


    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"]
    env = compose["orthanc"]["environment"]
    modalities = json.loads(env["ORTHANC__DICOM_MODALITIES"])
    scripts = {v.split(":")[1]: PROJECT / v.split(":")[0] for v in compose["orthanc"]["volumes"] if v.startswith("./")}
    port, pacs_dicom = free_port(), free_port()
    modalities["covidseg"].update(Host="127.0.0.1", Port=port)  # the compose service's address, here
    extra = {"LuaScripts": [str(scripts[path]) for path in json.loads(env["ORTHANC__LUA_SCRIPTS"])],
             "DicomModalities": modalities}
    study = generate_uid()
    source = make_cxr_dicom(COVID[0], "DX", study_uid=study, size=1024, pixel_spacing=0.2)
    with node(tmp_path / "spool", port, tmp_path / "node.log", COVIDSEG_NODE_ALLOWED_CALLERS="ORTHANC",
              COVIDSEG_NODE_DESTINATION=f"ORTHANC@127.0.0.1:{pacs_dicom}"), \
            orthanc(tmp_path / "orthanc", dicom_port=pacs_dicom, extra=extra) as url:
        httpx.post(f"{url}/instances", content=source, headers={"Content-Type": "application/dicom"})
        wait_for(lambda: len(results_by_source(url).get(read(source).SOPInstanceUID, [])) == 3, what="results back")
        assert results_by_source(url, study) == {read(source).SOPInstanceUID: ["OT", "SEG", "SR"]}
