"""Peak memory of one request by image size and output, each in a fresh process (the service's
own heap, model loaded and warmed up first), and of a full batch. Prints a table and writes it to
bench/RESULTS.md; `COVIDSEG_IMAGE_CONCURRENCY` (default 4) bounds how many such requests hold
their memory at once.

    python -m bench.memory
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource

from PIL import Image

from bench.results import publish
from bench.serve import SAMPLE

CASES = [  # (image side, images, query)
    (2048, 1, "format=json"), (2048, 1, "format=png&output=overlay"),
    (3000, 1, "format=json"), (3000, 1, "format=json&include=mask,overlay,probability,lung"),
    (3000, 16, "include=mask,overlay"),
]


def png_of_side(side: int) -> bytes:
    buf = io.BytesIO()
    Image.open(SAMPLE).convert("L").resize((side, side), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def measure(side: int, images: int, query: str, out: multiprocessing.Queue) -> None:
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    data = png_of_side(side)
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
    proc = ctx.Process(target=measure, args=(side, images, query, out))
    proc.start()
    before, after = out.get(timeout=600)
    proc.join()
    endpoint = "/segment" if images == 1 else f"/segment/batch, {images} images"
    return f"| {side} | {endpoint} | `{query}` | {before:.0f} | {after:.0f} | +{after - before:.0f} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    rows = [row(*case) for case in CASES]
    body = ("## Memory (`python -m bench.memory`)\n\n"
            "Peak resident memory (MB) of a fresh service process before and after one request, after "
            "a warm-up request on a 256 px image; the real COVID-19 Val sample upsampled to each side. "
            "The increase is what one such request holds while it is worked on: plan "
            "`COVIDSEG_IMAGE_CONCURRENCY` (requests at full size at once, default 4) x the largest "
            "increase, plus the baseline, as the container's memory.\n\n"
            "| image side | endpoint | query | before | after | increase |\n|---:|---|---|---:|---:|---:|\n"
            + "\n".join(rows))
    publish("memory", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
