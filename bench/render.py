"""Cost of the render step at the sizes the service sees: the overlay (infection tint and lung
outline) and PNG encoding, against what they replaced (Pillow's MinFilter outline, zlib level 6).
Prints a table and writes it to bench/RESULTS.md.

    python -m bench.render --runs 3
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image, ImageFilter

from app.card import ModelCard
from app.core.config import DEFAULT_MODEL_PATH
from app.pipeline.infer import OnnxSegmenter
from app.pipeline.postprocess import postprocess
from app.pipeline.preprocess import preprocess_batch
from app.pipeline.render import PNG_COMPRESS_LEVEL, encode_png, mask_image, outline, overlay_rgb
from bench.results import publish
from bench.serve import SAMPLE
from bench.timing import median_ms

SIZES = (256, 1024, 2048, 3000)


def pillow_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The outline as it was drawn before (Pillow's MinFilter), for comparison."""
    eroded = np.asarray(Image.fromarray(mask_image(mask)).filter(ImageFilter.MinFilter(2 * width + 1))) > 0
    return mask & ~eroded


def png_at(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def row(image: np.ndarray, probs: np.ndarray, size: int, runs: int) -> str:
    rng = np.random.default_rng(size)
    gray = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.int16)
    gray = np.clip(gray + rng.integers(-2, 3, gray.shape), 0, 255).astype(np.uint8)  # detector noise
    seg = postprocess(probs, size, size, 0.5, ModelCard.load(DEFAULT_MODEL_PATH).region_peak_threshold)
    width = max(1, round(size / 256))
    rgb = overlay_rgb(gray, seg.infection_mask, seg.lung_mask)
    before = median_ms(lambda: pillow_outline(seg.lung_mask, width), runs)
    now = median_ms(lambda: outline(seg.lung_mask, width), runs)
    build = median_ms(lambda: overlay_rgb(gray, seg.infection_mask, seg.lung_mask), runs)
    level6, chosen = median_ms(lambda: png_at(rgb, 6), runs), median_ms(lambda: encode_png(rgb), runs)
    size6, chosen_size = len(png_at(rgb, 6)) / 1e3, len(encode_png(rgb)) / 1e3
    return (f"| {size} | {before:.1f} | {now:.1f} | {build:.1f} | {level6:.0f} ({size6:,.0f} kB) "
            f"| {chosen:.0f} ({chosen_size:,.0f} kB) |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    model = OnnxSegmenter(DEFAULT_MODEL_PATH, providers="CPUExecutionProvider")
    image = np.asarray(Image.open(SAMPLE).convert("L"))
    probs = model.predict(preprocess_batch([image], model.info.input_size))[0]
    rows = [row(image, probs, size, args.runs) for size in SIZES]
    body = (f"## Render (`python -m bench.render --runs {args.runs}`)\n\n"
            f"Median ms of {args.runs} runs on a real COVID-19 Val image upsampled to each side (with +-2 "
            "grey levels of noise, as a detector gives) and the shipped model's masks at t=0.5. The lung "
            "outline is round(side / 256) px wide; the overlay is the RGB image the `overlay` PNG and the "
            f"DICOM Secondary Capture carry; PNG level {PNG_COMPRESS_LEVEL} is what the service writes. {args.note}\n\n"
            "| image side | lung outline, Pillow MinFilter (before) | lung outline, scipy (now) | overlay | "
            f"overlay PNG, level 6 (before) | overlay PNG, level {PNG_COMPRESS_LEVEL} (now) |\n"
            "|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    publish("render", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
