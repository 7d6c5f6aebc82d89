"""Execution provider options, apart from ONNX Runtime itself: the settings (app.core.config) build them,
and importing the settings must not load the runtime (the bridge and the batch driver never run a model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class CudaOptions:
    """CUDA execution provider options (settings ``COVIDSEG_CUDA_*``)."""

    device_id: int = 0
    tf32: bool = False  # off: CUDA convolutions in full fp32, so CUDA and CPU masks agree
    conv_algo_search: str = "HEURISTIC"  # EXHAUSTIVE, HEURISTIC or DEFAULT (cuDNN)
    memory_limit_mb: int = 0  # 0: no limit on the CUDA memory arena

    def as_provider_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"device_id": self.device_id, "use_tf32": int(self.tf32),
                                   "cudnn_conv_algo_search": self.conv_algo_search}
        if self.memory_limit_mb:
            options["gpu_mem_limit"] = self.memory_limit_mb * 1024 * 1024
        return options
