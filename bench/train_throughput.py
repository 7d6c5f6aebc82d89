"""Training-step throughput of the ResNet-34 U-Net at 256x256, batch 8: plain fp32 against the
other settings the training command can use. Prints a table and writes it to bench/RESULTS.md.

    python -m bench.train_throughput --steps 6
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from dataclasses import dataclass

import torch

from bench.results import publish
from training.losses import DiceBCELoss
from training.model import build_model

@dataclass(frozen=True)
class Setting:
    channels_last: bool = False
    dtype: torch.dtype | None = None  # autocast dtype
    compile: bool = False  # torch.compile (inductor)
    onednn_fp32_precision: str = "none"  # "bf16": oneDNN runs fp32 convolutions in bf16 internally


SETTINGS = {
    "fp32 (plain, NCHW)": Setting(),
    "fp32 + channels_last (training default on CPU)": Setting(channels_last=True),
    "bf16 autocast + channels_last": Setting(channels_last=True, dtype=torch.bfloat16),
    "bf16 autocast (NCHW)": Setting(dtype=torch.bfloat16),
    "fp32 + channels_last, oneDNN fp32_precision=bf16": Setting(channels_last=True, onednn_fp32_precision="bf16"),
    "fp32 + channels_last + torch.compile": Setting(channels_last=True, compile=True),
    "bf16 autocast + channels_last + torch.compile": Setting(channels_last=True, dtype=torch.bfloat16, compile=True),
}


def measure(setting: Setting, steps: int, warmup: int, batch: int, size: int) -> float:
    torch.backends.mkldnn.fp32_precision = setting.onednn_fp32_precision
    try:
        return _measure(setting.channels_last, setting.dtype, setting.compile, steps, warmup, batch, size)
    finally:
        torch.backends.mkldnn.fp32_precision = "none"


def _measure(channels_last: bool, dtype, compile: bool, steps: int, warmup: int, batch: int, size: int) -> float:
    torch.manual_seed(0)
    model = build_model()
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 2, size, size) > 0.7).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceBCELoss()
    model.train()
    if compile:
        model = torch.compile(model)  # the first (warm-up) steps pay for compilation
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch * len(times) / sum(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    p.add_argument("--only", default="", help="only the settings whose name contains this")
    args = p.parse_args(argv)
    rows = []
    base = None
    for name, setting in SETTINGS.items():
        if args.only and args.only not in name:
            continue
        ips = measure(setting, args.steps, args.warmup, args.batch_size, args.image_size)
        base = base or ips
        rows.append((name, ips, ips / base))
        print(f"{name:50s} {ips:6.2f} img/s  {ips / base:4.2f}x", flush=True)
    table = "\n".join(f"| {n} | {ips:.2f} | {r:.2f}x |" for n, ips, r in rows)
    md = (f"## Training throughput (`python -m bench.train_throughput --steps {args.steps}`)\n\n"
          f"ResNet-34 U-Net, 2 heads, batch {args.batch_size}, {args.image_size}x{args.image_size}, full step "
          f"(forward, Dice+BCE, backward, AdamW); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}.\n\n"
          "| setting | img/s | vs plain fp32 |\n|---|---:|---:|\n" + table + "\n")
    publish("train_throughput", md, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
