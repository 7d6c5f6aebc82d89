"""Cost of the postprocess step with and without the model card's region peak rule, at the image
sizes the service sees (dataset PNGs and modality-sized DICOM). Prints a table and writes it to
bench/RESULTS.md.

    python -m bench.postprocess --runs 20
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from app.card import ModelCard
from app.core.config import DEFAULT_MODEL_PATH
from app.pipeline.infer import OnnxSegmenter
from app.pipeline.postprocess import postprocess
from app.pipeline.preprocess import preprocess_batch
from bench.results import publish
from bench.serve import SAMPLE
from bench.timing import median_ms

SIZES = (256, 1024, 2048)


def table(probs: np.ndarray, threshold: float, rule: float, runs: int) -> str:
    rows = [f"| image side | without rule (ms) | with rule {rule:g} (ms) | added (ms) |", "|---:|---:|---:|---:|"]
    for size in SIZES:
        plain = median_ms(lambda: postprocess(probs, size, size, threshold), runs)
        ruled = median_ms(lambda: postprocess(probs, size, size, threshold, rule), runs)
        rows.append(f"| {size} | {plain:.2f} | {ruled:.2f} | {ruled - plain:+.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.postprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    model = OnnxSegmenter(DEFAULT_MODEL_PATH, providers="CPUExecutionProvider")
    rule = ModelCard.load(DEFAULT_MODEL_PATH).region_peak_threshold
    image = np.asarray(Image.open(SAMPLE).convert("L"))
    probs = model.predict(preprocess_batch([image], model.info.input_size))[0]
    body = (f"## Postprocess (`python -m bench.postprocess --runs {args.runs}`)\n\n"
            f"Median of {args.runs} runs of `postprocess` (resize the probabilities to the image, threshold "
            f"{args.threshold:g}, measurements) on the shipped model's output for a real COVID-19 Val image, "
            f"without and with the card's region peak rule ({rule:g}).\n\n{table(probs, args.threshold, rule, args.runs)}")
    publish("postprocess", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
