"""Importing the settings does not load ONNX Runtime: the bridge, the batch job's driver and config checks
read Settings without ever running a model (and ONNX Runtime must see ORT_DISABLE_TELEMETRY first)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_importing_the_settings_leaves_onnxruntime_unloaded():
    probe = ("import sys; from app.core.config import Settings; Settings().cuda_options(); "
             "print('onnxruntime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_cuda_options_are_one_class_wherever_imported():
    from app.core.config import Settings
    from app.pipeline.infer import CudaOptions

    assert isinstance(Settings().cuda_options(), CudaOptions)
