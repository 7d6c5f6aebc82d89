"""Peak memory of one request by image size and output, each in a fresh process (the service's
own heap, model loaded and warmed up first), and of a full batch, beside the admission's estimate of it
(app/services/admission.py); then bursts of concurrent large requests against a real server with its default
settings: its peak and what it keeps once idle. Prints the tables and writes them to bench/RESULTS.md.

    python -m bench.memory
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.core.config import Settings
from app.services.admission import WorkEstimate
from bench.results import publish
from bench.serve import SAMPLE, rss_peak_kb, server

CASES = [  # (image side, images, query); a side given as "7000x16" is a 16-bit PNG
    (2048, 1, "format=json"), (2048, 1, "format=png&output=overlay"),
    (3000, 1, "format=json"), (3000, 1, "format=json&include=mask,overlay,probability,lung"),
    ("7000x16", 1, "format=json"),
    (3000, 16, "include=mask,overlay"),
]
#: Bursts: (label, files per request, side, concurrent clients), each client sending one request.
BURSTS = [("4 x /segment/batch of 16 x 3000 px", 16, 3000, 4), ("4 x /segment of 7000 px 16-bit", 1, "7000x16", 4)]


def png_of_side(side: int | str) -> bytes:
    """The sample at ``side`` px: 8-bit smooth (bicubic), or 16-bit in blocks (nearest: a small file of many
    pixels, like the issue's 100 KB 7000 px PNG)."""
    buf = io.BytesIO()
    gray = Image.open(SAMPLE).convert("L")
    if isinstance(side, str):
        size = int(side.split("x")[0])
        wide = np.asarray(gray.resize((size, size), Image.NEAREST)).astype(np.uint16) * 257
        Image.fromarray(wide).save(buf, format="PNG")
    else:
        gray.resize((side, side), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def side_pixels(side: int | str) -> int:
    n = int(str(side).split("x")[0])
    return n * n


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def measure(data: bytes, images: int, query: str, out: multiprocessing.Queue) -> None:
    """One request's peak in this fresh process; the image made by the parent, so that making it is not
    counted in the baseline."""
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    with TestClient(create_app(Settings())) as client:
        client.post("/segment", files={"file": ("w.png", png_of_side(256))})  # warm: buffers of a small run
        before = peak_mb()
        if images == 1:
            r = client.post(f"/segment?{query}", files={"file": ("a.png", data)})
        else:
            r = client.post(f"/segment/batch?{query}", files=[("files", (f"{i}.png", data)) for i in range(images)])
        r.raise_for_status()
        out.put((before, peak_mb()))


def row(side: int, images: int, query: str) -> str:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=measure, args=(png_of_side(side), images, query, out))
    proc.start()
    before, after = out.get(timeout=600)
    proc.join()
    endpoint = "/segment" if images == 1 else f"/segment/batch, {images} images"
    estimate = WorkEstimate.of([side_pixels(side)] * images).megabytes
    return (f"| {side} | {endpoint} | `{query}` | {before:.0f} | {after:.0f} | +{after - before:.0f} | "
            f"{estimate:.0f} |")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def burst_row(label: str, files: int, side: int | str, clients: int) -> str:
    """``clients`` concurrent requests against a real server with its defaults: its peak, and its memory 5 s
    after the last answer."""
    data = png_of_side(side)
    with server(None, "CPUExecutionProvider", 0) as (url, proc):
        with httpx.Client(timeout=600) as http:
            http.post(f"{url}/segment", files={"file": ("w.png", png_of_side(256))}).raise_for_status()
        before = rss_kb(proc.pid) / 1024

        def one(_: int) -> int:
            with httpx.Client(timeout=600) as http:
                if files == 1:
                    return http.post(f"{url}/segment", files={"file": ("a.png", data)}).status_code
                return http.post(f"{url}/segment/batch",
                                 files=[("files", (f"{i}.png", data)) for i in range(files)]).status_code
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(one, range(clients)))
        seconds = time.perf_counter() - t0
        time.sleep(5)
        peak, idle = rss_peak_kb(proc.pid) / 1024, rss_kb(proc.pid) / 1024
    return f"| {label} | {tally(codes)} | {seconds:.1f} | {before:.0f} | {peak:.0f} | {idle:.0f} |"


def tally(codes: list[int]) -> str:
    """HTTP statuses counted: '3 x 200, 1 x 503' (0: no answer)."""
    return ", ".join(f"{codes.count(c)} x {c or 'no answer'}" for c in sorted(set(codes)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    rows = [row(*case) for case in CASES]
    bursts = [burst_row(*burst) for burst in BURSTS]
    budget = Settings().work_memory_mb
    body = ("## Memory (`python -m bench.memory`)\n\n"
            "Peak resident memory (MB) of a fresh service process before and after one request, after "
            "a warm-up request on a 256 px image; the real COVID-19 Val sample upsampled to each side (`7000x16`: "
            "a 16-bit PNG). The increase is what one such request holds while it is worked on; the estimate is "
            "what the admission counts for it before decoding (app/services/admission.py), which must be at "
            "least the increase. Requests are admitted while the estimates of those in work fit "
            f"`COVIDSEG_WORK_MEMORY_MB` ({budget:.0f}), so a replica needs the baseline plus that.\n\n"
            "| image side | endpoint | query | before | after | increase | estimate |\n"
            "|---:|---|---|---:|---:|---:|---:|\n"
            + "\n".join(rows)
            + "\n\nBursts against a real server (`python -m app`, default settings: the int8 model on CPU, "
            f"`COVIDSEG_WORK_MEMORY_MB={budget:.0f}`), the clients sending at once; resident memory (MB) after "
            "the warm-up, at the peak, and 5 s after the last answer (idle):\n\n"
            "| burst | answers | seconds | before | peak | idle after |\n|---|---|---:|---:|---:|---:|\n"
            + "\n".join(bursts))
    publish("memory", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
