"""``docker compose --profile pacs``: Orthanc (Debian's packages, deploy/docker/orthanc-debian.yml, with the shipped
file's settings), the DICOM node and the bridge, each in its container, talking on the project's network.

The tests share one project and run in order: the bridge's run before the node has seen anything, then the
routing, then the spool across a node restart while Orthanc is down."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import ROOT, fixture_images
from tests.deploy.compose import Compose, build, project
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.dicom_validate import iod_errors

pytestmark = pytest.mark.docker

OVERRIDE = ROOT / "deploy" / "docker" / "orthanc-debian.yml"
COVID = fixture_images("Val", "COVID-19")
SECRET_NAME, SECRET_ID = "SECRETNAME^PACS", "SECRET-PID-0815"
RESULT_MODALITIES = {"SEG", "OT", "SR"}  # the Segmentation, the Secondary Capture, the report


@pytest.fixture(scope="module")
def pacs(site_base: str) -> Iterator[Compose]:
    with project("covidseg-test-pacs", OVERRIDE) as compose:
        build(compose, "covidseg", PYTHON_IMAGE=site_base)
        build(compose, "orthanc", profile="pacs", DEBIAN_IMAGE=site_base)
        compose("--profile", "pacs", "up", "-d", "--no-build", "orthanc")
        compose.wait_healthy("orthanc", seconds=120)
        yield compose


def orthanc_url(compose: Compose) -> str:
    return f"http://127.0.0.1:{compose.port('orthanc', 8042)}"


def wait_for(check: Callable[[], bool], seconds: float = 240, what: str = "condition") -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not reached within {seconds}s")


def results_of(url: str, source_uid: str) -> dict[str, bytes]:
    """Modality -> file of the results in Orthanc that reference the source instance ``source_uid``."""
    found: dict[str, bytes] = {}
    for oid in httpx.get(f"{url}/instances", timeout=30).json():
        data = httpx.get(f"{url}/instances/{oid}/file", timeout=60).content
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if ds.Modality not in RESULT_MODALITIES:
            continue
        if ds.Modality == "SR":
            refs = {i.ReferencedSOPInstanceUID for e in ds.CurrentRequestedProcedureEvidenceSequence
                    for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
        else:
            refs = {ds.SourceImageSequence[0].ReferencedSOPInstanceUID}
        if source_uid in refs:
            assert ds.Modality not in found, f"two {ds.Modality} results for one source"
            found[ds.Modality] = data
    return found


def instance_count(url: str) -> int:
    return len(httpx.get(f"{url}/instances", timeout=30).json())


def assert_valid(results: dict[str, bytes], folder: Path) -> None:
    assert set(results) == RESULT_MODALITIES
    for modality, data in results.items():
        path = folder / f"{modality}.dcm"
        path.write_bytes(data)
        assert iod_errors(path) == [], modality


def storescu(port: int, path: Path, calling: str, called: str) -> None:
    subprocess.run(["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(path)],
                   check=True, capture_output=True, timeout=300)


def bridge_table(compose: Compose) -> dict[str, int]:
    """``docker compose --profile pacs run --rm pacs-bridge``: its summary table, by row."""
    done = compose("--profile", "pacs", "run", "--rm", "pacs-bridge", timeout=600)
    rows = {}
    for line in done.stdout.splitlines():
        name, _, count = line.rstrip().rpartition("  ")
        if count.strip().isdigit():
            rows[name.strip()] = int(count)
    assert rows, done.stdout + done.stderr
    return rows


def test_the_bridge_processes_what_was_stored_before_and_a_rerun_adds_nothing(pacs: Compose, tmp_path: Path):
    url = orthanc_url(pacs)
    source = make_cxr_dicom(COVID[0], "CR", size=1024, pixel_spacing=0.2, patient_name=SECRET_NAME,
                            patient_id=SECRET_ID)
    # stored while the node is not running: Orthanc's route to it fails, so only the bridge can make its results
    assert httpx.post(f"{url}/instances", content=source, timeout=60).status_code == 200
    wait_for(lambda: "Unable to send instance" in pacs.logs("orthanc"), seconds=60, what="Orthanc's route failing")
    wait_for(lambda: not [job for job in httpx.get(f"{url}/jobs", params={"expand": ""}, timeout=30).json()
                          if job["State"] in ("Pending", "Running", "Retry")], seconds=60, what="its job ended")
    pacs("--profile", "pacs", "up", "-d", "--no-build", "covidseg", "covidseg-node")
    pacs.wait_healthy("covidseg")
    pacs.wait_healthy("covidseg-node")
    assert results_of(url, read(source).SOPInstanceUID) == {}

    first = bridge_table(pacs)
    assert first["results stored now"] == 3 and first["failed (skipped)"] == 0, first
    assert_valid(results_of(url, read(source).SOPInstanceUID), tmp_path)
    held = instance_count(url)
    again = bridge_table(pacs)
    assert again["results stored now"] == 0 and again["already done (state file)"] == first["instances found " 
                                                                                            "(selected modalities)"]
    assert instance_count(url) == held


def test_a_2048_px_cr_stored_into_orthanc_comes_back_with_its_seg_sc_and_sr(pacs: Compose, tmp_path: Path):
    url = orthanc_url(pacs)
    path = tmp_path / "cr.dcm"
    path.write_bytes(make_cxr_dicom(COVID[1], "CR", size=2048, pixel_spacing=0.15, patient_name=SECRET_NAME,
                                    patient_id=SECRET_ID))
    storescu(pacs.port("orthanc", 4242), path, "MODALITY", "ORTHANC")  # a modality sends to the PACS
    uid = read(path.read_bytes()).SOPInstanceUID
    wait_for(lambda: len(results_of(url, uid)) == 3, what="SEG, SC and SR back in Orthanc")
    assert_valid(results_of(url, uid), tmp_path)


def test_results_queued_while_orthanc_is_down_survive_a_node_restart_and_are_delivered(pacs: Compose,
                                                                                       tmp_path: Path):
    def outgoing() -> list[str]:
        listing = pacs("exec", "-T", "covidseg-node", "ls", "/spool/outgoing").stdout.split()
        return [name for name in listing if name.endswith(".dcm")]

    pacs("stop", "orthanc")
    path = tmp_path / "cr.dcm"
    path.write_bytes(make_cxr_dicom(COVID[0], "CR", size=1024, pixel_spacing=0.2, patient_name=SECRET_NAME,
                                    patient_id=SECRET_ID))
    storescu(pacs.port("covidseg-node", 11112), path, "ORTHANC", "COVIDSEG")  # as Orthanc's route would
    wait_for(lambda: len(outgoing()) == 3, seconds=180, what="three results waiting in the spool")
    queued = outgoing()

    pacs("restart", "covidseg-node")
    pacs.wait_healthy("covidseg-node")
    assert outgoing() == queued  # on the spool's volume, not in the container

    pacs("start", "orthanc")
    pacs.wait_healthy("orthanc")
    url = orthanc_url(pacs)  # a new loopback port for the restarted container
    uid = read(path.read_bytes()).SOPInstanceUID
    wait_for(lambda: len(results_of(url, uid)) == 3, seconds=180, what="the queued results delivered")
    assert_valid(results_of(url, uid), tmp_path)
    wait_for(lambda: outgoing() == [], seconds=60, what="an empty outgoing queue")

    logs = pacs.logs("covidseg", "covidseg-node", "pacs-bridge")
    for secret in (SECRET_NAME.split("^")[0], SECRET_ID):
        assert secret not in logs, secret
