"""``python -m app`` without COVIDSEG_MODEL_PATH on a CPU serves the shipped int8 model (the same Val Dice at twice
the fp32 model's throughput), says so in its start-up log and in ``GET /model``; an explicit path wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from app.core.config import DEFAULT_MODEL_PATH, INT8_MODEL_PATH
from app.pipeline.infer import file_sha256
from tests.conftest import ROOT
from tests.servers import answers, free_port, running


def loaded_model(tmp_path: Path, **env: str) -> tuple[dict, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {k: v for k, v in os.environ.items() if k != "COVIDSEG_MODEL_PATH"}
    environment.update(COVIDSEG_LOG_LEVEL="info", COVIDSEG_PROVIDERS="auto", **env)
    log = tmp_path / "service.log"
    with open(log, "w") as out, running([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                                        lambda: answers(f"{url}/ready"), "service", env=environment, cwd=ROOT,
                                        stdout=out, stderr=subprocess.STDOUT):
        loaded = httpx.get(f"{url}/model", timeout=10).json()["loaded"]
    return loaded, log.read_text()


def test_the_cpu_default_is_the_int8_model(tmp_path):
    loaded, log = loaded_model(tmp_path)
    assert loaded["providers"] == ["CPUExecutionProvider"]  # this machine has no GPU
    assert loaded["precision"] == "int8" and loaded["sha256"] == file_sha256(INT8_MODEL_PATH)
    assert "default on CPU" in loaded["chosen_by"]
    assert "(int8, chosen by the default on CPU" in log


def test_an_explicit_model_path_wins(tmp_path):
    loaded, log = loaded_model(tmp_path, COVIDSEG_MODEL_PATH=str(DEFAULT_MODEL_PATH))
    assert loaded["precision"] == "fp32" and loaded["sha256"] == file_sha256(DEFAULT_MODEL_PATH)
    assert loaded["chosen_by"] == "COVIDSEG_MODEL_PATH" and "(fp32, chosen by COVIDSEG_MODEL_PATH)" in log
