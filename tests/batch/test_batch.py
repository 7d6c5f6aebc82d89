"""``python -m app.batch`` on a real local Ray cluster (started here with 2 CPUs, stopped after), on real
files and a real Orthanc: folder, manifest and PACS sources; good, corrupt, non-image and non-chest
inputs; reruns, a SIGKILL mid-way and a worker killed under the job; figures equal the service's."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import ray  # noqa: F401  (the batch extra, which the README's test command installs)

from app.pipeline.dicom.common import result_uid
from tests.conftest import ROOT, fixture_images, model_under_test, read_gray
from tests.nonchest import png_bytes
from tests.dicom_fixtures import make_cxr_dicom, mammogram, with_garbage_frame, without_file_meta
from tests.servers import free_port, orthanc

PATIENT = {"patient_name": "BATCH^SECRET", "patient_id": "PID-SECRET-42"}
ACCESSION = "ACC1"  # what make_cxr_dicom writes as AccessionNumber
FIGURES = ("ppar", "infected_lung_share", "lung_fraction", "severity", "threshold")
COVID, NORMAL = fixture_images("Val", "COVID-19"), fixture_images("Val", "Normal")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real Ray head on this machine with 2 CPUs; its address for ``--ray-address``."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(port), "--temp-dir", temp,
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, env=env,
                   capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def run_batch(*args: str, log: Path | None = None, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "info",
                   "RAY_AUTH_MODE": "disabled", **env}
    done = subprocess.run([sys.executable, "-m", "app.batch", *args, "--no-progress"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def results(out: Path) -> dict[str, dict]:
    table = pq.read_table(out / "results")
    rows = table.to_pylist()
    counts = Counter(r["source"] for r in rows)
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1]  # every input exactly once
    return {r["source"]: r for r in rows}


def served(client, data: bytes, name: str, threshold: float | None = None) -> dict:
    params = {} if threshold is None else {"threshold": threshold}
    r = client.post("/segment", params=params, files={"file": (name, data)})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A folder as an archive holds it: PNGs, modality-like DICOMs (a 2048 px MONOCHROME1 JPEG-LS CR,
    a DX, a CR kept without File Meta and named without extension), a knee and a lateral CR, a mammogram
    whose pixel data no decoder reads, a cut PNG, a text file, in subfolders."""
    root = tmp_path_factory.mktemp("archive")
    (root / "png").mkdir()
    (root / "dicom" / "2026").mkdir(parents=True)
    for path in COVID + NORMAL:
        shutil.copy(path, root / "png" / path.name)
    dicoms = {
        "cr2048.dcm": make_cxr_dicom(COVID[0], photometric="MONOCHROME1", compress="1.2.840.10008.1.2.4.80",
                                     size=2048, pixel_spacing=0.139, **PATIENT),
        "dx.dcm": make_cxr_dicom(COVID[1], modality="DX", **PATIENT),
        "knee.dcm": make_cxr_dicom(NORMAL[0], body_part="KNEE", **PATIENT),
        "lateral.dcm": make_cxr_dicom(NORMAL[1], view="LL", **PATIENT),
        "IM000001": without_file_meta(make_cxr_dicom(NORMAL[0], photometric="MONOCHROME1", **PATIENT)),
        "mammo.dcm": with_garbage_frame(mammogram(NORMAL[1], compress="jpeg-baseline", **PATIENT)),
    }
    for name, data in dicoms.items():
        (root / "dicom" / "2026" / name).write_bytes(data)
    (root / "png" / "cut.png").write_bytes(COVID[0].read_bytes()[:400])
    # pictures the model cannot judge: a blank one and a chest as a negative
    (root / "other").mkdir()
    (root / "other" / "blank.png").write_bytes(png_bytes(np.full((512, 512), 240)))
    (root / "other" / "negative.png").write_bytes(png_bytes(255 - read_gray(COVID[1])))
    (root / "notes.txt").write_text("not an image\n")
    return root


def test_a_folder_on_the_cluster_gives_the_service_figures_and_a_rerun_adds_nothing(ray_cluster, archive, tmp_path,
                                                                                    service_client):
    out = tmp_path / "out"
    first = run_batch(str(archive), "--out", str(out), "--ray-address", ray_cluster, "--workers", "2",
                      "--batch-size", "3", "--outputs", "seg,sr", log=tmp_path / "first.log")
    rows = results(out)
    assert len(rows) == len([p for p in archive.rglob("*") if p.is_file()])
    by_name = {Path(s).name: r for s, r in rows.items()}
    assert {n: (r["status"], r["error_code"]) for n, r in by_name.items() if r["status"] != "ok"} == {
        "cut.png": ("failed", "corrupt_image"), "notes.txt": ("failed", "not_an_image"),
        "knee.dcm": ("skipped", "not_selected"), "lateral.dcm": ("skipped", "not_selected"),
        "mammo.dcm": ("skipped", "not_selected"),  # judged by its header: its pixels were never decoded
        "blank.png": ("refused", "no_contrast"), "negative.png": ("refused", "appears_inverted")}
    assert by_name["blank.png"]["ppar"] is None and by_name["blank.png"]["severity"] is None
    assert by_name["IM000001"]["status"] == "ok" and by_name["IM000001"]["sop_instance_uid"]
    client, _ = service_client
    for source, row in rows.items():
        if row["status"] == "ok":
            expected = served(client, Path(source).read_bytes(), Path(source).name)
            assert {k: row[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}, source
            assert row["model_sha256"] == expected["model"]["sha256"]
            if "dicom" in expected:
                assert row["sop_instance_uid"] == expected["dicom"]["sop_instance_uid"]
                assert row["outputs"] == "seg,sr"
    seg = pydicom.dcmread(next((out / "dicom" / "seg").iterdir()))
    assert seg.Modality == "SEG"
    assert oct(os.stat(out / "dicom").st_mode & 0o777) == "0o700"

    parts = sorted((out / "results").iterdir())
    again = run_batch(str(archive), "--out", str(out), "--ray-address", ray_cluster, log=tmp_path / "again.log")
    assert sorted((out / "results").iterdir()) == parts  # nothing added, nothing rewritten
    assert re.search(r"^added by this run +0$", again.stdout, re.M), again.stdout
    assert (out / "ppar_distribution.png").stat().st_size > 0 and (out / "severity_histogram.png").exists()
    # No patient identifier in the table, the outputs of the job or Ray's own logs of it.
    table_bytes = b"".join(p.read_bytes() for p in (out / "results").iterdir())
    text = first.stdout + first.stderr + again.stdout + again.stderr
    for secret in (*PATIENT.values(), ACCESSION):
        assert secret.encode() not in table_bytes and secret not in text
    assert set(pq.read_schema(parts[0]).names).isdisjoint({"patient_name", "patient_id", "accession_number"})


def test_a_manifest_csv_or_parquet_on_embedded_ray(archive, tmp_path, service_client):
    listed = [p.relative_to(archive) for p in sorted((archive / "png").iterdir())][:3]
    csv_manifest = archive / "manifest.csv"
    with open(csv_manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "note"], *[[str(p), "x"] for p in listed], [str(listed[0]), "twice"]])
    parquet_manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": [str(archive / p) for p in listed]}), parquet_manifest)
    try:
        for manifest, out in ((csv_manifest, tmp_path / "csv"), (parquet_manifest, tmp_path / "parquet")):
            run_batch(str(manifest), "--out", str(out), "--threshold", "0.25", "--local-cpus", "2")
            rows = results(out)
            assert len(rows) == len(listed)
            for source, row in rows.items():
                path = source if os.path.isabs(source) else archive / source
                expected = served(service_client[0], Path(path).read_bytes(), Path(path).name, 0.25)
                assert {k: row[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}
    finally:
        csv_manifest.unlink()


def test_a_manifest_without_a_path_column_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file\na.png\n")
    done = subprocess.run([sys.executable, "-m", "app.batch", str(manifest), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "'path' column" in done.stderr


def many_inputs(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        shutil.copy(COVID[i % len(COVID)], folder / f"img{i:03d}.png")
    return folder


def test_a_job_killed_midway_and_rerun_has_every_input_once(ray_cluster, tmp_path):
    inputs, out = many_inputs(tmp_path / "in", 40), tmp_path / "out"
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "RAY_AUTH_MODE": "disabled"}
    job = subprocess.Popen([sys.executable, "-m", "app.batch", str(inputs), "--out", str(out), "--ray-address",
                            ray_cluster, "--batch-size", "2", "--no-progress"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "results").glob("part-*.parquet")):
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # the driver, mid-way
    job.wait(timeout=60)
    written = len(pq.read_table(out / "results")) if list((out / "results").glob("part-*")) else 0
    assert 0 < written < 40
    run_batch(str(inputs), "--out", str(out), "--ray-address", ray_cluster, "--batch-size", "2")
    rows = results(out)
    assert len(rows) == 40 and {r["status"] for r in rows.values()} == {"ok"}


def ray_worker_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::MapWorker"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_a_worker_killed_under_the_job_is_replaced_and_its_items_retried(ray_cluster, tmp_path):
    inputs, out = many_inputs(tmp_path / "in", 30), tmp_path / "out"
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "RAY_AUTH_MODE": "disabled"}
    job = subprocess.Popen([sys.executable, "-m", "app.batch", str(inputs), "--out", str(out), "--ray-address",
                            ray_cluster, "--batch-size", "2", "--workers", "2", "--no-progress"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (ray_worker_pids() and list((out / "results").glob("part-*.parquet"))):
        time.sleep(0.2)
    before = set(ray_worker_pids())
    os.kill(min(before), signal.SIGKILL)
    replaced = False
    while job.poll() is None and not replaced:
        replaced = bool(set(ray_worker_pids()) - before)  # a new engine took the dead one's place
        time.sleep(0.1)
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    rows = results(out)
    assert len(rows) == 30 and {r["status"] for r in rows.values()} == {"ok"}
    assert replaced


@pytest.fixture(scope="module")
def pacs_with_studies(tmp_path_factory) -> Iterator[tuple[str, dict[str, bytes]]]:
    with orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as rest:
        sources = {"chest": make_cxr_dicom(COVID[0], size=1024, **PATIENT),
                   "dx": make_cxr_dicom(COVID[1], modality="DX", **PATIENT),
                   "knee": make_cxr_dicom(NORMAL[0], body_part="KNEE", **PATIENT)}
        for data in sources.values():
            httpx.post(f"{rest}/instances", content=data).raise_for_status()
        yield rest, sources


@pytest.mark.parametrize("api", ["--dicomweb-url", "--orthanc-url"])
def test_a_pacs_source_stores_results_back_and_skips_what_the_rules_leave_out(ray_cluster, pacs_with_studies, api,
                                                                              tmp_path, service_client):
    rest, sources = pacs_with_studies
    url = f"{rest}/dicom-web" if api == "--dicomweb-url" else rest
    out = tmp_path / "out"
    run_batch(api, url, "--out", str(out), "--ray-address", ray_cluster, "--outputs", "seg,sc,sr", "--stow",
              "--threshold", "0.4")
    rows = results(out)
    uids = {name: pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for name, d in sources.items()}
    assert set(rows) >= set(uids.values())
    assert rows[uids["knee"]]["status"] == "skipped" and rows[uids["knee"]]["error_code"] == "not_selected"
    for name in ("chest", "dx"):
        row = rows[uids[name]]
        expected = served(service_client[0], sources[name], f"{name}.dcm", 0.4)
        assert {k: row[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}
        assert row["outputs"] == "seg,sc,sr"
        for kind in ("seg", "sc", "sr"):  # stored with the service's own deterministic UIDs
            uid = result_uid(kind, uids[name], row["model_sha256"], 0.4)
            hits = httpx.post(f"{rest}/tools/lookup", content=uid).json()
            assert any(h["Type"] == "Instance" for h in hits), (name, kind)
