"""Serving benchmark: starts the real server on loopback and measures

0. model-only latency and throughput of each shipped graph (fp32, int8) with and without the
   test-time flip, and their ratio to fp32 (``--variants-only`` stops here),
1. model-only ONNX Runtime latency and throughput (batch 1, preprocessed 256x256 input),
2. single-request end-to-end p50/p95 for a 256x256 PNG,
3. throughput with 1, 4, 16 and 64 concurrent clients (``--clients``), each with micro-batching
   off and on (``--microbatch-waits``, ms),
4. the server's peak RSS,

then writes the table to bench/RESULTS.md.

    python -m bench.serve --requests 40
    python -m bench.serve --providers CUDAExecutionProvider,CPUExecutionProvider   # on a GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.core.config import DEFAULT_MODEL_PATH
from app.pipeline.infer import TTA_MODES, OnnxSegmenter, predict_with_tta
from app.pipeline.preprocess import preprocess_batch
from bench.results import publish

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests/fixtures/covid-qu-ex-mini/Infection Segmentation Data/Val/COVID-19/images/covid_1918.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def model_only(model_path: Path, runs: int, tta: str = "none", providers: str = "CPUExecutionProvider"
               ) -> tuple[float, float]:
    from PIL import Image

    model = OnnxSegmenter(model_path, providers=providers)
    x = preprocess_batch([np.asarray(Image.open(SAMPLE).convert("L"))])
    for _ in range(3):
        predict_with_tta(model, x, tta)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predict_with_tta(model, x, tta)
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    return p50, len(times) / sum(times)


def variants(model_path: Path, runs: int, providers: str = "CPUExecutionProvider") -> str:
    """Model-only figures of the fp32 graph, its int8 sibling (when present), each with and without flip."""
    int8 = model_path.with_name(f"{model_path.stem}-int8.onnx")
    rows = []
    for path in [model_path] + ([int8] if int8.exists() else []):
        for tta in TTA_MODES:
            p50, tput = model_only(path, runs, tta, providers)
            rows.append((path.name, tta, p50, tput))
            print(f"{path.name} tta={tta}: p50 {1000 * p50:.1f} ms, {tput:.2f} img/s", flush=True)
    base = rows[0][3]
    return (f"## Model variants (`python -m bench.serve --variants-only --requests {runs}`)\n\n"
            f"Model-only ONNX Runtime, {providers}, batch 1, one 256x256 image back to back.\n\n"
            "| graph | test-time flip | latency p50 | throughput | vs fp32 without flip |\n|---|---|---:|---:|---:|\n"
            + "".join(f"| `{name}` | {tta} | {1000 * p50:.1f} ms | {tput:.2f} img/s | {tput / base:.2f}x |\n"
                      for name, tta, p50, tput in rows))


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def server(model: Path, providers: str, microbatch_wait_ms: float) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real service on loopback, ready."""
    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(model), "COVIDSEG_LOG_LEVEL": "warning",
           "COVIDSEG_PROVIDERS": providers, "COVIDSEG_MICROBATCH_WAIT_MS": str(microbatch_wait_ms)}
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not _ready(url):
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def client_of(url: str) -> Callable[[httpx.Client], float]:
    """One request, timed. The multipart body is encoded once: the load generator shares the server's
    cores, and re-encoding it per request would measure the client, not the service."""
    prepared = httpx.Request("POST", f"{url}/segment", files={"file": ("x.png", SAMPLE.read_bytes(), "image/png")})
    body, content_type = prepared.read(), prepared.headers["content-type"]

    def one(client: httpx.Client) -> float:
        t0 = time.perf_counter()
        r = client.post(f"{url}/segment", content=body, headers={"content-type": content_type}, timeout=300)
        r.raise_for_status()
        return time.perf_counter() - t0

    return one


def throughput(one: Callable[[httpx.Client], float], clients: int, requests: int) -> float:
    per_client = max(1, requests // clients)

    def worker(_: int) -> int:
        with httpx.Client() as c:
            for _ in range(per_client):
                one(c)
        return per_client

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(worker, range(clients)))
    return done / (time.perf_counter() - t0)


def measure_server(url: str, pid: int, requests: int, clients: list[int]) -> dict[str, Any]:
    one = client_of(url)
    with httpx.Client() as c:
        for _ in range(3):
            one(c)
        single = [one(c) for _ in range(requests)]
    result = {"p50": percentile(single, 50), "p95": percentile(single, 95), "tput": {}}
    print(f"single request: p50 {1000 * result['p50']:.1f} ms, p95 {1000 * result['p95']:.1f} ms", flush=True)
    for n in clients:
        result["tput"][n] = throughput(one, n, max(requests, n))
        print(f"{n} clients: {result['tput'][n]:.2f} req/s", flush=True)
    result["rss_mb"] = rss_peak_kb(pid) / 1024
    return result


def serving_table(args: argparse.Namespace, mo_p50: float, mo_tput: float, runs: dict[float, dict[str, Any]]) -> str:
    waits = list(runs)
    head = "| measurement | " + " | ".join(f"micro-batching {'off' if w == 0 else f'{w:g} ms'}" for w in waits)
    rows = [("single request end-to-end p50", [f"{1000 * r['p50']:.1f} ms" for r in runs.values()]),
            ("single request end-to-end p95", [f"{1000 * r['p95']:.1f} ms" for r in runs.values()])]
    rows += [(f"throughput, {n} concurrent client{'s' if n > 1 else ''}",
              [f"{r['tput'][n]:.2f} req/s" for r in runs.values()]) for n in args.clients]
    rows.append(("server peak RSS", [f"{r['rss_mb']:.0f} MB" for r in runs.values()]))
    off = runs[waits[0]]
    checks = [("single-request p50 / model-only p50", off["p50"] / mo_p50, "<= 1.25"),
              ("4-client throughput / model-only throughput", off["tput"].get(4, float("nan")) / mo_tput, ">= 0.90"),
              ("server peak RSS (MB)", off["rss_mb"], "< 1024")]
    for w in waits[1:]:
        checks.append((f"single-request p50 added by a {w:g} ms wait (ms)", 1000 * (runs[w]["p50"] - off["p50"]),
                       f"<= {w:g}"))
    return (f"## Serving (`python -m bench.serve --requests {args.requests} --providers {args.providers} "
            f"--clients {','.join(map(str, args.clients))} --microbatch-waits {','.join(f'{w:g}' for w in waits)}`)\n\n"
            f"Model `{args.model.name}`, {args.providers}, one 256x256 PNG per request over loopback HTTP; "
            f"model-only ONNX Runtime p50 {1000 * mo_p50:.1f} ms, {mo_tput:.2f} img/s (batch 1, back to back).\n\n"
            + head + " |\n|---|" + "---:|" * len(waits) + "\n"
            + "".join(f"| {name} | " + " | ".join(values) + " |\n" for name, values in rows)
            + "\n| target | measured | bar |\n|---|---:|---|\n"
            + "".join(f"| {n} | {v:.2f} | {bar} |\n" for n, v, bar in checks))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--requests", type=int, default=40, help="requests per measurement")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="ONNX Runtime providers of the model-only runs and the server (e.g. "
                        "CUDAExecutionProvider,CPUExecutionProvider on a GPU machine)")
    p.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 16, 64],
                   help="concurrency sweep")
    p.add_argument("--microbatch-waits", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 2.0],
                   help="micro-batching waits to compare, ms (0 = off, measured first)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--variants-only", action="store_true", help="only the model-only table of fp32/int8 x flip")
    args = p.parse_args(argv)

    table = variants(args.model, args.requests, args.providers)
    publish("variants", table, write=not args.no_write)
    if args.variants_only:
        return 0
    mo_p50, mo_tput = model_only(args.model, args.requests, providers=args.providers)
    runs = {}
    for wait in args.microbatch_waits:
        print(f"micro-batching wait {wait:g} ms", flush=True)
        with server(args.model, args.providers, wait) as (url, proc):
            runs[wait] = measure_server(url, proc.pid, args.requests, args.clients)
    md = serving_table(args, mo_p50, mo_tput, runs)
    publish("serve", md, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
