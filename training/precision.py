"""Device and numeric precision of a training run: which one, and the autocast context for it."""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from app.pipeline.preprocess import INPUT_SIZE
from training.model import build_model

log = logging.getLogger("training.precision")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, size: int = INPUT_SIZE) -> str:
    if precision != "auto":
        return precision
    return "fp16" if device.type == "cuda" else faster_cpu_precision(size)


def step_seconds(model: torch.nn.Module, precision: str, size: int, batch: int = 4, steps: int = 2) -> float:
    """Seconds per training step of ``model`` (after one warm-up step), forward and backward."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            out = model(x)
        out.float().mean().backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def faster_cpu_precision(size: int) -> str:
    """fp32 or bf16 autocast, by a few timed steps on a throw-away model: bf16 was 2.3x fp32 on one
    of this project's machines and 0.97x on another (bench/RESULTS.md), so measure, don't guess."""
    model = build_model().to(memory_format=torch.channels_last)
    timed = {p: step_seconds(model, p, size) for p in ("fp32", "bf16")}
    choice = min(timed, key=timed.get)
    log.info("CPU precision probe: %s; training in %s",
             ", ".join(f"{p} {1000 * t:.0f} ms/step" for p, t in timed.items()), choice)
    return choice


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (CPU or CUDA), fp16 AMP (CUDA), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
