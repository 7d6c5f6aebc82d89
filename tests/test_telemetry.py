"""ONNX Runtime's official builds send usage telemetry unless ORT_DISABLE_TELEMETRY is set before
they initialise: every entry point of the project sets it, and a value the operator chose stands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def telemetry_setting_after_import(module: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    probe = f"import {module}, os, onnxruntime; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    done = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("module", ["app.main", "app.node.__main__", "training.quantize", "training.evaluate"])
def test_every_entry_point_turns_onnx_runtime_telemetry_off(module):
    assert telemetry_setting_after_import(module) == "1"


def test_an_operators_own_setting_stands():
    assert telemetry_setting_after_import("app.main", ORT_DISABLE_TELEMETRY="0") == "0"
