"""The `gpu` extra (onnxruntime-gpu with its CUDA libraries) installed in its own virtual environment:
on a machine without a GPU the service starts on CPU, says so, and answers like the CPU build.

Marked slow (several minutes: about 3 GB of CUDA libraries to install); ``-m "not slow"`` skips it
in a quick local run. Its wheels come from ``COVIDSEG_WHEEL_CACHE`` when set (.ci/run fills it,
outside the checkout, with the extra's wheels and the build backend), else from the package index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, fixture_images, model_under_test
from tests.servers import answers, free_port, wait_until

COVID = fixture_images("Val", "COVID-19")[0]
pytestmark = pytest.mark.slow


def wheel_sources() -> list[str]:
    """pip options to install from the wheel cache alone when there is one (pip would otherwise
    prefer the index's copy of the same wheel), else nothing: the package index."""
    cache = os.environ.get("COVIDSEG_WHEEL_CACHE")
    return ["--no-index", "--find-links", cache] if cache and Path(cache).is_dir() else []


def test_gpu_extra_serves_on_cpu_without_a_gpu(tmp_path: Path, service_client):
    venv = tmp_path / "gpu-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *wheel_sources(), "-e", f"{ROOT}[gpu]"],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-2000:]
    python = str(venv / "bin" / "python")
    build = subprocess.run([python, "-c", "import onnxruntime as o; print(o.get_available_providers())"],
                           capture_output=True, text=True, timeout=120)
    assert "CUDAExecutionProvider" in build.stdout  # the GPU build is what got installed

    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model_under_test()), "COVIDSEG_LOG_LEVEL": "info"}
    log = tmp_path / "service.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(f"{url}/ready"), proc, what="service on the gpu extra")
            assert httpx.get(f"{url}/model").json()["loaded"]["providers"] == ["CPUExecutionProvider"]
            r = httpx.post(f"{url}/segment", files={"file": ("x.png", COVID.read_bytes(), "image/png")}, timeout=60)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert r.status_code == 200
    reference = service_client[0].post("/segment", files={"file": ("x.png", COVID.read_bytes(), "image/png")}).json()
    assert r.json()["infection_pixels"] == reference["infection_pixels"]
    assert "ready on CPUExecutionProvider" in log.read_text()
