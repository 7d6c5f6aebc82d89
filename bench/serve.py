"""Serving benchmark: starts the real server on loopback and measures

0. model-only latency and throughput of each shipped graph (fp32, int8) with and without the
   test-time flip, and their ratio to fp32 (``--variants-only`` stops here),
1. model-only ONNX Runtime latency and throughput (batch 1, preprocessed 256x256 input),
2. single-request end-to-end p50/p95 for a 256x256 PNG,
3. throughput with 1, 4, 16 and 64 concurrent clients (``--clients``), each with micro-batching
   off and on (``--microbatch-waits``, ms),
4. the server's peak RSS,

then writes the table to bench/RESULTS.md; and (``--overhead-only`` runs only this)

5. the service's overhead: single-request end-to-end p50 over model-only p50 for the fp32 graph and
   its int8 sibling, from the standard library's ``http.client`` (judged) and from httpx, with where the
   rest of a request's time goes (``overhead``).

    python -m bench.serve --requests 40
    python -m bench.serve --overhead-only --requests 200
    python -m bench.serve --providers CUDAExecutionProvider,CPUExecutionProvider   # on a GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
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
    model = OnnxSegmenter(model_path, providers=providers)
    x = sample_batch()
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


def sample_batch() -> np.ndarray:
    """The network input of :data:`SAMPLE`, as the service computes it."""
    from PIL import Image

    return preprocess_batch([np.asarray(Image.open(SAMPLE).convert("L"))])


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def server(model: Path | None, providers: str, microbatch_wait_ms: float, app_root: Path = ROOT,
           **settings: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real service on loopback, ready; ``model`` None: the service's default for the provider; ``app_root``:
    the checkout whose ``app`` is served (e.g. a ``git archive`` of an earlier commit, to compare before and after
    in the same conditions); ``settings``: more COVIDSEG_* variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "COVIDSEG_MODEL_PATH"}
    env.update({"COVIDSEG_LOG_LEVEL": "warning", "COVIDSEG_PROVIDERS": providers,
                "COVIDSEG_MICROBATCH_WAIT_MS": str(microbatch_wait_ms), **settings})
    if model is not None:
        env["COVIDSEG_MODEL_PATH"] = str(model)
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            cwd=app_root)
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


def encoded_upload() -> tuple[bytes, str]:
    """The multipart body of one upload of :data:`SAMPLE` and its content type, encoded once: the load
    generator shares the server's cores, and re-encoding it per request would measure the client."""
    prepared = httpx.Request("POST", "http://127.0.0.1/segment",
                             files={"file": ("x.png", SAMPLE.read_bytes(), "image/png")})
    return prepared.read(), prepared.headers["content-type"]


def client_of(url: str) -> Callable[[httpx.Client], float]:
    """One request, timed."""
    body, content_type = encoded_upload()

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


#: The service's overhead targets: single-request end-to-end p50 over model-only p50, per precision.
OVERHEAD_BARS = {"fp32": 1.10, "int8": 1.25}
#: What ``overhead`` reads from /metrics: the service's own time per request and per model run.
SERVER_SUMS = {'covidseg_request_duration_seconds_sum{route="/segment"}': "request_s",
               'covidseg_request_duration_seconds_count{route="/segment"}': "requests",
               "covidseg_inference_duration_seconds_sum": "run_s",
               "covidseg_inference_duration_seconds_count": "runs"}


def precision_of(model_path: Path) -> str:
    return "int8" if model_path.stem.endswith("-int8") else "fp32"


def server_sums(client: httpx.Client, url: str) -> dict[str, float]:
    """The service's latency histogram sums and counts (seconds, requests, model runs), from /metrics."""
    sums = {}
    for line in client.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in SERVER_SUMS:
            sums[SERVER_SUMS[name]] = float(value)
    return sums


class StdlibClient:
    """One keep-alive connection through the standard library's ``http.client``: the lean client of the
    overhead figures. The client runs on the two cores the service uses, and httpx's own Python per request
    (0.4-0.5 ms more than this one's per ``GET /health``: the ``client floor`` rows) would be counted as the
    service's; curl, which the README calls the service with, is C."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


class HttpxClient:
    """httpx, as the other tables and most Python callers use it, behind :class:`StdlibClient`'s interface."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
        response = self.client.request(method, path, content=body, headers=headers)
        return response.status_code, response.content

    def close(self) -> None:
        self.client.close()


#: The clients of the overhead figures: the lean one the ratio is judged on, then httpx (the other tables').
OVERHEAD_CLIENTS = {"http.client": StdlibClient, "httpx": HttpxClient}


def measure_overhead(model_path: Path, requests: int, rounds: int, providers: str, app_root: Path
                     ) -> dict[str, Any]:
    """Model-only runs in this process and single requests to the served model from each client, in
    alternating rounds (the server idle during the model-only runs), so that all see the same load on the
    shared cores."""
    model, x = OnnxSegmenter(model_path, providers=providers), sample_batch()
    body, content_type = encoded_upload()
    headers = {"content-type": content_type}
    per_round = max(1, requests // rounds)
    model_s, steps = [], []
    e2e_s: dict[str, list[float]] = {name: [] for name in OVERHEAD_CLIENTS}
    floor_s: dict[str, list[float]] = {name: [] for name in OVERHEAD_CLIENTS}
    with server(model_path, providers, 0.0, app_root) as (url, _), contextlib.ExitStack() as stack:
        clients = {name: make(url) for name, make in OVERHEAD_CLIENTS.items()}
        for client in clients.values():
            stack.callback(client.close)
        metrics_client = clients["httpx"].client

        def timed(client: str, method: str, path: str, content: bytes | None, into: list[float]) -> bytes:
            t0 = time.perf_counter()
            status, answer = clients[client].request(method, path, content, headers if content else None)
            into.append(time.perf_counter() - t0)
            if status != 200:
                raise SystemExit(f"{method} {path}: HTTP {status}: {answer[:200]!r}")
            return answer

        def segment(client: str) -> dict[str, float]:
            return json.loads(timed(client, "POST", "/segment", body, e2e_s[client]))["timings_ms"]

        for _ in range(3):
            model.predict(x)
            for client in OVERHEAD_CLIENTS:
                segment(client)
                timed(client, "GET", "/health", None, floor_s[client])
        model_s.clear()
        for series in (*e2e_s.values(), *floor_s.values()):
            series.clear()
        before = server_sums(metrics_client, url)
        for round_ in range(rounds):
            for _ in range(per_round):
                t0 = time.perf_counter()
                model.predict(x)
                model_s.append(time.perf_counter() - t0)
            # The first requests after the idle server's pause are the slowest: each client goes first in turn.
            for client in list(OVERHEAD_CLIENTS)[::1 if round_ % 2 == 0 else -1]:
                steps += [segment(client) for _ in range(per_round)]
                for _ in range(5):
                    timed(client, "GET", "/health", None, floor_s[client])
        after = server_sums(metrics_client, url)
    served = {k: after[k] - before.get(k, 0.0) for k in after}
    model_p50 = statistics.median(model_s)
    result = {"model_p50": model_p50,
              "e2e_p50": {c: statistics.median(t) for c, t in e2e_s.items()},
              "e2e_mean": {c: statistics.fmean(t) for c, t in e2e_s.items()},
              "floor_p50": {c: statistics.median(t) for c, t in floor_s.items()},
              "steps": {k: statistics.median(t[k] for t in steps) for k in steps[0]},
              "steps_mean_total": statistics.fmean(t["total"] for t in steps),
              "request_mean": served["request_s"] / served["requests"], "run_mean": served["run_s"] / served["runs"],
              "inference_mean": statistics.fmean(t["inference"] for t in steps)}
    result["ratio"] = {c: p50 / model_p50 for c, p50 in result["e2e_p50"].items()}
    print(f"{model_path.name}: model-only p50 {1000 * model_p50:.1f} ms; "
          + "; ".join(f"{c}: end-to-end p50 {1000 * result['e2e_p50'][c]:.1f} ms, ratio {result['ratio'][c]:.3f}"
                      for c in OVERHEAD_CLIENTS), flush=True)
    return result


def overhead_table(args: argparse.Namespace, runs: dict[str, dict[str, Any]], load: tuple[float, float]) -> str:
    """Both ratios against their bars, per client, and where a request's time goes beside the model run."""
    names = list(runs)
    lean, heavy = OVERHEAD_CLIENTS

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.1f} ms"

    rows = [("model-only ONNX Runtime p50", [ms(r["model_p50"]) for r in runs.values()]),
            (f"single request end-to-end p50, {lean}", [ms(r["e2e_p50"][lean]) for r in runs.values()]),
            (f"**end-to-end p50 / model-only p50, {lean}**", [f"**{r['ratio'][lean]:.3f}**" for r in runs.values()]),
            ("bar", [f"<= {OVERHEAD_BARS[precision_of(Path(n))]:.2f}" for n in names]),
            (f"single request end-to-end p50, {heavy}", [ms(r["e2e_p50"][heavy]) for r in runs.values()]),
            (f"end-to-end p50 / model-only p50, {heavy}", [f"{r['ratio'][heavy]:.3f}" for r in runs.values()])]
    rows += [(f"client floor: `GET /health` round trip p50, {c}", [f"{1000 * r['floor_p50'][c]:.2f} ms"
                                                                  for r in runs.values()]) for c in OVERHEAD_CLIENTS]
    rows += [(f"`timings_ms.{k}` p50", [f"{r['steps'][k]:.2f} ms" for r in runs.values()])
             for k in ("decode", "preprocess", "inference", "postprocess")]
    rows += [("mean: model run in the service (`/metrics`)", [ms(r["run_mean"]) for r in runs.values()]),
             ("mean: `inference` beyond the model run (hand-off to its thread, or waiting for a slot)",
              [f"{r['inference_mean'] - 1000 * r['run_mean']:.2f} ms" for r in runs.values()]),
             ("mean: in the app outside the steps (routing, form, dependencies, hand-offs, JSON, middleware)",
              [f"{1000 * r['request_mean'] - r['steps_mean_total']:.2f} ms" for r in runs.values()])]
    rows += [(f"mean: HTTP, uvicorn and the client (end-to-end - the app's own time), {c}",
              [f"{1000 * (r['e2e_mean'][c] - r['request_mean']):.2f} ms" for r in runs.values()])
             for c in OVERHEAD_CLIENTS]
    per_round = args.requests // args.rounds
    return (f"## Service overhead (`python -m bench.serve --overhead-only --requests {args.requests} "
            f"--rounds {args.rounds} --providers {args.providers}`)\n\n"
            "One 256x256 PNG per request over loopback HTTP (keep-alive, body encoded once), micro-batching off; "
            f"model-only: the same graph and input in the benchmark's process, batch 1. {args.rounds} alternating "
            f"rounds of {per_round} model-only runs, then {per_round} requests and 5 `GET /health` from each client "
            f"({lean}, the standard library's, and {heavy}; each first in every other round), per graph. The ratio is judged on "
            f"{lean}: the client shares the service's two cores, and what {heavy} adds is the client's own work "
            f"(the floor rows). Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end.\n\n"
            "| measurement | " + " | ".join(f"`{n}`" for n in names) + " |\n|---|" + "---:|" * len(names) + "\n"
            + "".join(f"| {name} | " + " | ".join(values) + " |\n" for name, values in rows))


def overhead(args: argparse.Namespace) -> str:
    int8 = args.model.with_name(f"{args.model.stem}-int8.onnx")
    load0 = os.getloadavg()[0]
    runs = {path.name: measure_overhead(path, args.requests, args.rounds, args.providers, args.app_root)
            for path in [args.model] + ([int8] if int8.exists() else [])}
    return overhead_table(args, runs, (load0, os.getloadavg()[0]))


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
    p.add_argument("--overhead-only", action="store_true",
                   help="only the overhead table: end-to-end over model-only p50, fp32 and int8, with a breakdown")
    p.add_argument("--rounds", type=int, default=10,
                   help="overhead: alternating rounds of model-only runs and requests (pairs them under changing load)")
    p.add_argument("--app-root", type=Path, default=ROOT,
                   help="serve the app of this checkout (e.g. a git archive of an earlier commit, to compare)")
    args = p.parse_args(argv)
    if args.overhead_only:
        publish("overhead", overhead(args), write=not args.no_write)
        return 0

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
    publish("overhead", overhead(args), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
