"""The batch job in containers: ``docker compose --profile batch run --rm batch`` (embedded Ray), then the same job
on a Ray cluster of containers (deploy/docker/ray-cluster.yml: a head and two workers from the batch image),
submitted with ``--ray-address``, and a worker container killed under it.

The tests share one project and one archive, and run in order: the cluster's rows are compared with the
embedded run's."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, fixture_images
from tests.deploy.compose import Compose, build, checkout_model, project, run
from tests.dicom_fixtures import make_cxr_dicom
from tests.servers import service

pytestmark = pytest.mark.docker

RAY_CLUSTER = ROOT / "deploy" / "docker" / "ray-cluster.yml"
IMAGES = [path for split in ("Train", "Val") for cls in ("COVID-19", "Normal", "Non-COVID")
          for path in fixture_images(split, cls)]
COPIES = 4  # each fixture image this many times: enough blocks for a worker to die in the middle of the job
#: The table as the container reads it: {source: row}, each source checked to be there once.
READ_TABLE = """
import collections, json, sys
import pyarrow.parquet as pq
rows = pq.read_table(sys.argv[1]).to_pylist()
twice = [s for s, n in collections.Counter(r["source"] for r in rows).items() if n > 1]
print(json.dumps({"twice": twice, "rows": {r["source"]: r for r in rows}}))
"""


@pytest.fixture(scope="module")
def archive() -> Iterator[Path]:
    """PNGs, DICOMs and a cut PNG in a folder the service user (uid 10001) of the containers can read."""
    root = Path(tempfile.mkdtemp(prefix="covidseg-archive-"))
    try:
        for copy in range(COPIES):
            for i, path in enumerate(IMAGES):
                shutil.copy(path, root / f"{copy}-{i}.png")
        (root / "cr.dcm").write_bytes(make_cxr_dicom(IMAGES[0], "CR", size=1024, pixel_spacing=0.2))
        (root / "dx.dcm").write_bytes(make_cxr_dicom(IMAGES[1], "DX", photometric="MONOCHROME1"))
        (root / "cut.png").write_bytes(IMAGES[0].read_bytes()[:400])  # a failed row, not the end of the job
        for path in [root, *root.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def batch(site_base: str, archive: Path) -> Iterator[Compose]:
    with project("covidseg-test-batch", RAY_CLUSTER, COVIDSEG_BATCH_INPUT=str(archive),
                 COVIDSEG_RAY_TOKEN=secrets.token_hex(16)) as compose:
        build(compose, "batch", profile="batch", PYTHON_IMAGE=site_base)
        yield compose


def table(compose: Compose, out: str) -> dict[str, dict]:
    done = compose("--profile", "batch", "run", "--rm", "--no-deps", "batch", "python", "-c", READ_TABLE,
                   f"/results/{out}/results")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["twice"] == [], "inputs in the table more than once"
    return found["rows"]


def test_the_batch_service_makes_one_row_per_input_with_the_services_figures_and_a_rerun_adds_nothing(
        batch: Compose, archive: Path):
    first = batch("--profile", "batch", "run", "--rm", "batch", timeout=900)
    rows = table(batch, "run")
    assert set(rows) == {f"/data/{p.name}" for p in archive.iterdir()}
    assert rows["/data/cut.png"]["status"] == "failed" and rows["/data/cut.png"]["error_code"] == "corrupt_image"
    assert {r["status"] for s, r in rows.items() if s != "/data/cut.png"} == {"ok"}, first.stdout
    (sha256,) = {r["model_sha256"] for r in rows.values() if r["status"] == "ok"}
    with service(COVIDSEG_MODEL_PATH=str(checkout_model(sha256))) as url:  # the checkout's service, same model
        for name in ("0-0.png", "0-5.png", "cr.dcm", "dx.dcm"):
            answer = httpx.post(f"{url}/segment", files={"file": (name, (archive / name).read_bytes())},
                                timeout=120).json()
            row = rows[f"/data/{name}"]
            assert {k: row[k] for k in ("ppar", "infected_lung_share", "lung_fraction", "severity",
                                        "infection_pixels", "lung_pixels", "threshold")} \
                == {k: answer[k] for k in ("ppar", "infected_lung_share", "lung_fraction", "severity",
                                           "infection_pixels", "lung_pixels", "threshold")}, name
    again = batch("--profile", "batch", "run", "--rm", "batch", timeout=900)
    assert re.search(r"^added by this run\s+0$", again.stdout, re.M), again.stdout
    assert table(batch, "run") == rows


def cluster_nodes(compose: Compose) -> int:
    status = compose("exec", "-T", "ray-head", "ray", "status", check=False).stdout
    return status.count(" node_") if "Active:" in status else 0


def test_the_job_on_a_ray_cluster_of_containers_gives_the_embedded_runs_rows(batch: Compose):
    batch("--profile", "ray", "up", "-d", "ray-head", "ray-worker")
    deadline = time.time() + 120
    while cluster_nodes(batch) < 3 and time.time() < deadline:  # the head and both workers joined
        time.sleep(1)
    assert cluster_nodes(batch) == 3
    batch("exec", "-T", "ray-head", "python", "-m", "app.batch", "/data", "--out", "/results/cluster",
          "--ray-address", "ray-head:6379", "--workers", "2", "--no-progress", timeout=900)
    assert table(batch, "cluster") == table(batch, "run")


def test_a_worker_container_killed_under_the_job_is_replaced_and_every_input_is_in_the_table_once(
        batch: Compose, archive: Path):
    inputs = len(list(archive.iterdir()))
    parts = ["exec", "-T", "ray-head", "sh", "-c", "ls /results/killed/results 2>/dev/null | grep -c parquet"]
    job = subprocess.Popen(batch.args("exec", "-T", "ray-head", "python", "-m", "app.batch", "/data", "--out",
                                      "/results/killed", "--ray-address", "ray-head:6379", "--workers", "2",
                                      "--batch-size", "2", "--no-progress"),
                           cwd=ROOT, env={**os.environ, **batch.env}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and int(batch(*parts, check=False).stdout.strip() or 0) == 0:
            time.sleep(0.3)
        victim = batch.containers("ray-worker")[0]
        run(["docker", "kill", victim])  # mid-job: blocks written, most not yet
        written = int(batch(*parts, check=False).stdout.strip() or 0)
        assert 0 < written < inputs // 2
        batch("--profile", "ray", "up", "-d", "ray-worker")  # compose brings the worker back; Ray retries on it
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    workers = [json.loads(run(["docker", "inspect", c]).stdout)[0]["State"] for c in batch.containers("ray-worker")]
    assert [w["Running"] for w in workers] == [True, True]  # the killed one back in the cluster
    assert table(batch, "killed") == table(batch, "run")
