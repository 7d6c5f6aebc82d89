"""``docker compose up``: the CPU service as a hospital starts it, built FROM the site base image."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, fixture_images
from tests.deploy.compose import Compose, build, checkout_model, project
from tests.dicom_fixtures import make_cxr_dicom, read
from tests.servers import answers, service

pytestmark = pytest.mark.docker

SECRET_NAME, SECRET_ID = "SECRETNAME^PATIENT", "SECRET-PID-4711"
#: What a /segment answer holds besides this request's own id and timings: all of it must match.
VARYING = {"request_id", "timings_ms"}


@pytest.fixture(scope="module")
def up(site_base: str) -> Iterator[tuple[Compose, str, float]]:
    """The compose project started; yields it, the service's URL on loopback and the seconds from ``up`` to
    the first 200 of /ready."""
    with project("covidseg-test-service") as compose:
        build(compose, "covidseg", PYTHON_IMAGE=site_base)
        started = time.monotonic()
        compose("up", "-d", "--no-build", "covidseg")
        url = f"http://127.0.0.1:{compose.port('covidseg', 8000)}"
        while not answers(f"{url}/ready"):
            assert time.monotonic() - started < 180, f"not ready within 180 s: {compose.logs('covidseg')[-3000:]}"
            time.sleep(0.2)
        yield compose, url, time.monotonic() - started


def figures(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    return {k: v for k, v in answer.json().items() if k not in VARYING}


def test_it_turns_healthy_by_its_own_healthcheck_soon_after_it_is_ready(up):
    compose, url, ready_after = up
    start = time.monotonic()
    compose.wait_healthy("covidseg", seconds=120)
    # the healthcheck runs every 10 s (start_interval needs Docker 25): one interval and its timeout at most
    # after the service first answers /ready, where a 30 s interval would take up to 30 s
    assert time.monotonic() - start <= 16, f"healthy {time.monotonic() - start:.1f}s after ready ({ready_after:.1f}s)"
    health = compose.inspect("covidseg")["Config"]["Healthcheck"]
    assert health["Interval"] == 10 * 10**9 and health["StartPeriod"] == 60 * 10**9


def test_it_runs_unprivileged_on_a_read_only_root(up):
    compose, _, _ = up
    state = compose.inspect("covidseg")
    assert state["HostConfig"]["ReadonlyRootfs"] is True and state["Config"]["User"] == "covidseg"
    assert compose("exec", "-T", "covidseg", "id", "-u").stdout.strip() == "10001"
    denied = compose("exec", "-T", "covidseg", "touch", "/srv/app/written", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert compose("exec", "-T", "covidseg", "touch", "/tmp/scratch").returncode == 0  # the tmpfs


def test_the_container_answers_what_the_checkouts_service_answers(up, tmp_path: Path):
    """The same figures for the same images: PNGs of both classes, and a DICOM, at two thresholds."""
    _, url, _ = up
    pngs = fixture_images("Val", "COVID-19")[:2] + fixture_images("Val", "Normal")[:1]
    dicom = make_cxr_dicom(pngs[0], "CR", size=1024, pixel_spacing=0.2)
    uploads = [(p.name, p.read_bytes()) for p in pngs] + [("cxr.dcm", dicom)]
    served = httpx.get(f"{url}/model").json()
    with service(COVIDSEG_MODEL_PATH=str(checkout_model(served["sha256"]))) as local:  # the model it chose
        assert httpx.get(f"{local}/model").json()["sha256"] == served["sha256"]
        for name, data in uploads:
            for threshold in (0.5, 0.25):
                ours, theirs = (figures(httpx.post(f"{base}/segment", params={"threshold": threshold},
                                                   files={"file": (name, data)}, timeout=120))
                                for base in (url, local))
                assert ours == theirs, name
                assert ours["infection_pixels"] >= 0 and ours["lung_pixels"] > 0
            png_mask = [httpx.post(f"{base}/segment", params={"format": "png"}, files={"file": (name, data)},
                                   timeout=120).content for base in (url, local)]
            assert png_mask[0] == png_mask[1], name


def test_the_image_is_labelled_with_its_version_and_model(up):
    compose, url, _ = up
    labels = compose.inspect("covidseg")["Config"]["Labels"]
    model = httpx.get(f"{url}/model").json()
    assert labels["org.opencontainers.image.version"] == httpx.get(f"{url}/openapi.json").json()["info"]["version"]
    assert (labels["covidseg.model.name"], labels["covidseg.model.version"], labels["covidseg.model.sha256"]) \
        == (model["name"], model["version"], model["sha256"])


def test_its_logs_carry_no_patient_data(up):
    compose, url, _ = up
    dicom = make_cxr_dicom(fixture_images("Val", "COVID-19")[0], "CR", patient_name=SECRET_NAME,
                           patient_id=SECRET_ID, size=512)
    ds = read(dicom)
    assert httpx.post(f"{url}/segment", files={"file": ("x.dcm", dicom)}, timeout=120).status_code == 200
    assert httpx.post(f"{url}/segment", params={"format": "dicom-seg"}, files={"file": ("x.dcm", dicom)},
                      timeout=120).status_code == 200
    truncated = dicom[: len(dicom) // 2]  # a refusal is logged too: its code, never the file's content
    assert httpx.post(f"{url}/segment", files={"file": ("x.dcm", truncated)}, timeout=120).status_code == 400
    logs = compose.logs("covidseg")
    assert "corrupt_dicom" in logs  # the refusal was logged, by its code
    for secret in (SECRET_NAME.split("^")[0], SECRET_ID, ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert secret not in logs, secret


def test_compose_stop_drains_the_request_in_work_and_ends_it_within_its_grace_period(up):
    compose, url, _ = up
    grace = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["covidseg"]["stop_grace_period"]
    assert grace == "30s"  # longer than the service's drain (COVIDSEG_DRAIN_TIMEOUT, 20 s)
    png = fixture_images("Val", "COVID-19")[0].read_bytes()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{url}/segment/batch", params={"tta": "flip"},
                             files=[("files", (f"{i}.png", png)) for i in range(8)], timeout=120)
        time.sleep(0.5)  # uploaded and in work
        start = time.monotonic()
        compose("stop", "covidseg", timeout=60)
        took = time.monotonic() - start
        assert answer.result().status_code == 200  # the request in work was answered before the end
    state = compose.inspect("covidseg")["State"]
    # 143: uvicorn re-raises SIGTERM once its shutdown is done; a SIGKILL after the grace period would be 137
    assert state["Status"] == "exited" and state["ExitCode"] == 143, json.dumps(state)
    assert took < 30, f"stop took {took:.1f}s"
    logs = compose.logs("covidseg")
    assert "shutting down: queued requests refused" in logs and "Application shutdown complete" in logs
