"""Closed-loop load against a real server with its default settings: N clients each sending 3000 px PNGs one
after another (a 503 `overloaded` is counted as shed and retried after a short pause), for a fixed time per
level; then SIGTERM with every client still sending: how long the server takes to exit. Prints a table and
writes it to bench/RESULTS.md.

    python -m bench.load --clients 1,8,32,128 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from tqdm import tqdm

from app.core.config import Settings
from bench.memory import png_of_side, tally
from bench.results import publish
from bench.serve import percentile, rss_peak_kb, server

SIDE = 3000


def client_loop(url: str, data: bytes, until: float, stop: threading.Event) -> list[tuple[int, float, float]]:
    """(status, seconds, time answered) of each request one client sent until ``until`` (or ``stop``)."""
    seen = []
    with httpx.Client(timeout=600) as http:
        while time.monotonic() < until and not stop.is_set():
            t0 = time.monotonic()
            try:
                status = http.post(f"{url}/segment", files={"file": ("a.png", data)}).status_code
            except httpx.HTTPError:
                status = 0  # no answer: the connection was closed or reset
            seen.append((status, time.monotonic() - t0, time.monotonic()))
            if status == 503:
                time.sleep(0.5)
    return seen


def level(clients: int, seconds: float, data: bytes) -> str:
    """One row: ``clients`` closed-loop clients for ``seconds`` against a fresh server."""
    with server(None, "CPUExecutionProvider", 0) as (url, proc):
        httpx.post(f"{url}/segment", files={"file": ("a.png", data)}, timeout=600).raise_for_status()
        stop = threading.Event()
        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda _: client_loop(url, data, t0 + seconds, stop), range(clients)))
        elapsed = time.monotonic() - t0
        peak = rss_peak_kb(proc.pid) / 1024
    answers = [a for run in runs for a in run]
    ok = sorted(s for code, s, _ in answers if code == 200)
    shed = sum(1 for code, _, _ in answers if code == 503)
    other = sum(1 for code, _, _ in answers if code not in (200, 503))
    p50, p99 = (percentile(ok, q) if ok else float("nan") for q in (50, 99))
    return (f"| {clients} | {len(ok) / elapsed:.2f} | {p50:.2f} | {p99:.2f} | "
            f"{max(ok, default=0):.2f} | {shed / max(len(answers), 1):.0%} | {other} | {peak:.0f} |")


def shutdown_row(clients: int, data: bytes) -> str:
    """SIGTERM while ``clients`` keep sending: seconds until the server has exited, and what each client's request
    in flight at the signal was answered."""
    with server(None, "CPUExecutionProvider", 0) as (url, proc):
        stop = threading.Event()
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(client_loop, url, data, time.monotonic() + 3600, stop) for _ in range(clients)]
            time.sleep(10)  # a full queue
            t0 = signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=600)
            exit_seconds = time.monotonic() - t0
            stop.set()
            runs = [f.result() for f in futures]
    # the request each client had sent (or was sending) when the signal came; none for a client pausing after a 503
    in_flight = [code for run in runs for code, seconds, at in run if at - seconds <= signalled <= at]
    return f"| {clients} | {exit_seconds:.1f} | {tally(in_flight)} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,8,32,128", help="comma list of client counts, one level each")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each level")
    p.add_argument("--shutdown-clients", type=int, default=64)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    data = png_of_side(SIDE)
    counts = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]
    rows = [level(n, args.seconds, data) for n in tqdm(counts, desc="load levels")]
    shutdown = shutdown_row(args.shutdown_clients, data)
    load_after = os.getloadavg()[0]
    settings = Settings()
    body = (f"## Load (`python -m bench.load --clients {args.clients} --seconds {args.seconds:g} "
            f"--shutdown-clients {args.shutdown_clients}`)\n\n"
            f"Closed-loop clients each sending a {SIDE} px PNG (`/segment`, JSON) after the other for "
            f"{args.seconds:g} s, against a fresh `python -m app` with its defaults (int8 on CPU, "
            f"`COVIDSEG_MAX_QUEUE_WAIT_S={settings.max_queue_wait_s:g}`, `COVIDSEG_WORK_MEMORY_MB="
            f"{settings.work_memory_mb:g}`); a client answered 503 waits 0.5 s and sends again. The clients run on "
            "the server's own 2 cores. Latency of the 200 answers in seconds; shed: the share of answers that "
            "were 503 `overloaded`; other: any other status or no answer; peak: the server's resident memory, MB. "
            f"Load average (1 min) {load_before:.2f} at the start, {load_after:.2f} at the end.\n\n"
            "| clients | answers 200 / s | p50 | p99 | max | shed | other | peak MB |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
            + f"\n\nSIGTERM after 10 s of {args.shutdown_clients} such clients (`COVIDSEG_DRAIN_TIMEOUT="
            f"{settings.drain_timeout:g}`): seconds from the signal to the process's exit, and what each client's "
            "request in flight at the signal was answered (no answer: the connection was closed).\n\n"
            "| clients | exit after s | requests in flight answered |\n|---:|---:|---|\n"
            + shutdown)
    publish("load", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
