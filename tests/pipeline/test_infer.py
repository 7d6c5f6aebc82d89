"""Provider resolution and CUDA options (the GPU build itself: tests/test_gpu_extra.py)."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.pipeline import infer


@pytest.mark.parametrize("available, gpus, expected", [
    (["CPUExecutionProvider"], 0, ["CPUExecutionProvider"]),
    (["CPUExecutionProvider"], 1, ["CPUExecutionProvider"]),  # a GPU, but the CPU build of ONNX Runtime
    (["CUDAExecutionProvider", "CPUExecutionProvider"], 0, ["CPUExecutionProvider"]),  # GPU build, no GPU
    (["CUDAExecutionProvider", "CPUExecutionProvider"], 2, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
])
def test_auto_picks_cuda_only_when_a_gpu_is_usable(monkeypatch, available, gpus, expected):
    monkeypatch.setattr(infer.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(infer, "cuda_device_count", lambda: gpus)
    assert infer.resolve_providers("auto") == expected


def test_explicit_providers_must_exist():
    assert infer.resolve_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]
    with pytest.raises(infer.ModelLoadError, match="not available"):
        infer.resolve_providers("CUDAExecutionProvider,CPUExecutionProvider")


class FakeDriver:
    """libcuda's two calls that decide whether a GPU is usable."""

    def __init__(self, init_status: int, devices: int):
        self.init_status, self.devices = init_status, devices

    def cuInit(self, flags):  # noqa: N802 - the driver's names
        return self.init_status

    def cuDeviceGetCount(self, count):  # noqa: N802
        count._obj.value = self.devices
        return 0


@pytest.mark.parametrize("driver, expected", [
    (None, 0),  # no libcuda.so.1: no driver
    (FakeDriver(100, 0), 0),  # CUDA_ERROR_NO_DEVICE from cuInit
    (FakeDriver(0, 2), 2),
])
def test_cuda_device_count_asks_the_driver(monkeypatch, driver, expected):
    def load(name):
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(infer.ctypes, "CDLL", load)
    assert infer.cuda_device_count() == expected


def test_cuda_options_come_from_settings():
    s = Settings(cuda_device_id=1, cuda_tf32=True, cuda_conv_algo_search="EXHAUSTIVE", cuda_memory_limit_mb=512)
    listed = infer.provider_list(["CUDAExecutionProvider", "CPUExecutionProvider"], s.cuda_options())
    assert listed == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 1, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                 "gpu_mem_limit": 512 * 1024 * 1024}), "CPUExecutionProvider"]
    default = infer.provider_list(["CUDAExecutionProvider"], Settings().cuda_options())[0][1]
    assert default["use_tf32"] == 0 and "gpu_mem_limit" not in default  # TF32 off: CUDA agrees with CPU
