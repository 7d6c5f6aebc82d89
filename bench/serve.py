"""Serving benchmark: starts the real server on loopback and measures

0. model-only latency and throughput of each shipped graph (fp32, int8) with and without the
   test-time flip, and their ratio to fp32 (``--variants-only`` stops here),
1. model-only ONNX Runtime latency and throughput (batch 1, preprocessed 256x256 input),
2. single-request end-to-end p50/p95 for a 256x256 PNG,
3. throughput with 1, 4 and 8 concurrent clients,
4. the server's peak RSS,

then writes the table to bench/RESULTS.md.

    python -m bench.serve --requests 40
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from app.core.config import DEFAULT_MODEL_PATH
from app.pipeline.infer import TTA_MODES, OnnxSegmenter, predict_with_tta
from app.pipeline.preprocess import preprocess_batch
from bench.results import write_section

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests/fixtures/covid-qu-ex-mini/Infection Segmentation Data/Val/COVID-19/images/covid_1918.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def model_only(model_path: Path, runs: int, tta: str = "none") -> tuple[float, float]:
    from PIL import Image

    model = OnnxSegmenter(model_path, providers="CPUExecutionProvider")
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


def variants(model_path: Path, runs: int) -> str:
    """Model-only figures of the fp32 graph, its int8 sibling (when present), each with and without flip."""
    int8 = model_path.with_name(f"{model_path.stem}-int8.onnx")
    rows = []
    for path in [model_path] + ([int8] if int8.exists() else []):
        for tta in TTA_MODES:
            p50, tput = model_only(path, runs, tta)
            rows.append((path.name, tta, p50, tput))
            print(f"{path.name} tta={tta}: p50 {1000 * p50:.1f} ms, {tput:.2f} img/s", flush=True)
    base = rows[0][3]
    return (f"## Model variants (`python -m bench.serve --variants-only --requests {runs}`)\n\n"
            "Model-only ONNX Runtime, CPUExecutionProvider, batch 1, one 256x256 image back to back.\n\n"
            "| graph | test-time flip | latency p50 | throughput | vs fp32 without flip |\n|---|---|---:|---:|---:|\n"
            + "".join(f"| `{name}` | {tta} | {1000 * p50:.1f} ms | {tput:.2f} img/s | {tput / base:.2f}x |\n"
                      for name, tta, p50, tput in rows))


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--requests", type=int, default=40, help="requests per measurement")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--variants-only", action="store_true", help="only the model-only table of fp32/int8 x flip")
    args = p.parse_args(argv)
    data = SAMPLE.read_bytes()

    table = variants(args.model, args.requests)
    print(table)
    if not args.no_write:
        write_section("variants", table)
    if args.variants_only:
        return 0

    mo_p50, mo_tput = model_only(args.model, args.requests)
    print(f"model only: p50 {1000 * mo_p50:.1f} ms, {mo_tput:.2f} img/s", flush=True)

    port = free_port()
    env = {**os.environ, "COVIDSEG_MODEL_PATH": str(args.model), "COVIDSEG_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.5)

        # The multipart body is encoded once: the load generator shares the server's two cores,
        # and re-encoding it per request would measure the client, not the service.
        prepared = httpx.Request("POST", f"{url}/segment", files={"file": ("x.png", data, "image/png")})
        body, content_type = prepared.read(), prepared.headers["content-type"]

        def one(client: httpx.Client) -> float:
            t0 = time.perf_counter()
            r = client.post(f"{url}/segment", content=body, headers={"content-type": content_type}, timeout=120)
            r.raise_for_status()
            return time.perf_counter() - t0

        with httpx.Client() as c:
            for _ in range(3):
                one(c)
            single = [one(c) for _ in range(args.requests)]
        e2e_p50, e2e_p95 = percentile(single, 50), percentile(single, 95)
        print(f"single request: p50 {1000 * e2e_p50:.1f} ms, p95 {1000 * e2e_p95:.1f} ms", flush=True)

        tput = {}
        for clients in (1, 4, 8):
            per_client = max(1, args.requests // clients)

            def worker(_: int) -> int:
                with httpx.Client() as c:
                    for _ in range(per_client):
                        one(c)
                return per_client

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                done = sum(pool.map(worker, range(clients)))
            tput[clients] = done / (time.perf_counter() - t0)
            print(f"{clients} clients: {tput[clients]:.2f} req/s", flush=True)
        rss_mb = rss_peak_kb(server.pid) / 1024
        print(f"server peak RSS {rss_mb:.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=30)

    checks = [
        ("single-request p50 / model-only p50", e2e_p50 / mo_p50, "<= 1.25"),
        ("4-client throughput / model-only throughput", tput[4] / mo_tput, ">= 0.90"),
        ("server peak RSS (MB)", rss_mb, "< 1024"),
    ]
    md = (f"## Serving (`python -m bench.serve --requests {args.requests}`)\n\n"
          f"Model `{args.model.name}`, CPUExecutionProvider, one 256x256 PNG per request over loopback HTTP.\n\n"
          "| measurement | value |\n|---|---:|\n"
          f"| model-only ONNX Runtime latency p50 | {1000 * mo_p50:.1f} ms |\n"
          f"| model-only throughput (batch 1, back to back) | {mo_tput:.2f} img/s |\n"
          f"| single request end-to-end p50 | {1000 * e2e_p50:.1f} ms |\n"
          f"| single request end-to-end p95 | {1000 * e2e_p95:.1f} ms |\n"
          + "".join(f"| throughput, {k} concurrent client{'s' if k > 1 else ''} | {v:.2f} req/s |\n"
                    for k, v in tput.items())
          + f"| server peak RSS | {rss_mb:.0f} MB |\n\n"
          "| target | measured | bar |\n|---|---:|---|\n"
          + "".join(f"| {n} | {v:.2f} | {bar} |\n" for n, v, bar in checks))
    print(md)
    if not args.no_write:
        write_section("serve", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
