"""What the input judgement costs per image: the judge step's own time beside the model run, for an accepted
chest radiograph and for a refused picture (one refused as no chest gets a second model run on its
negative). The scores come out of the same model run, so the graph's extra outputs are measured too: the
model run of the shipped graph against a graph cut back to its probabilities. Prints a table and writes it
to bench/RESULTS.md.

    python -m bench.judge --runs 30
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from app.core.config import DEFAULT_MODEL_PATH
from app.engine import Engine
from app.engine.engine import load_card
from app.pipeline.infer import PROBABILITIES, OnnxSegmenter
from app.pipeline.load import LoadedImage
from bench.results import publish
from bench.serve import SAMPLE
from bench.timing import median_ms


def engine_of(path: Path) -> Engine:
    model = OnnxSegmenter(path, providers="CPUExecutionProvider")
    return Engine(model=model, card=load_card(path, model.info.sha256, verify=False))


def probabilities_only(path: Path, into: Path) -> Path:
    """The graph with its judgement outputs cut off (ONNX Runtime then skips their nodes)."""
    graph = onnx.load(str(path))
    kept = [o for o in graph.graph.output if o.name == PROBABILITIES]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(into))
    return into


def rows(path: Path, runs: int) -> list[str]:
    engine = engine_of(path)
    chest = LoadedImage(np.asarray(Image.open(SAMPLE).convert("L")), "PNG", "L")
    turned = LoadedImage(np.ascontiguousarray(np.rot90(chest.gray)), "PNG", "L")
    with tempfile.TemporaryDirectory() as tmp:
        plain = OnnxSegmenter(probabilities_only(path, Path(tmp) / "plain.onnx"), providers="CPUExecutionProvider")
        out = []
        for name, image in (("chest radiograph (accepted)", chest), ("turned 90 degrees (refused)", turned)):
            batch = engine.preprocess([image])
            outputs = engine.infer(batch)
            run = median_ms(lambda: engine.model.run(batch), runs)
            run_plain = median_ms(lambda: plain.run(batch), runs)
            judge = median_ms(lambda: engine.judge(batch, outputs, [image]), runs)
            verdict = engine.judge(batch, outputs, [image])[0]
            out.append(f"| {engine.model.info.name} | {name} | {run_plain:.1f} | {run:.1f} | {judge:.2f} | "
                       f"{(run - run_plain) + judge:.1f} | {verdict.refusal.code if verdict.refusal else 'accepted'} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.judge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    models = [DEFAULT_MODEL_PATH, DEFAULT_MODEL_PATH.with_name(f"{DEFAULT_MODEL_PATH.stem}-int8.onnx")]
    table = ["| model | image | model run without the scores (ms) | model run with them (ms) | judge step (ms) | "
             "added per image (ms) | verdict |", "|---|---|---:|---:|---:|---:|---|"]
    for path in models:
        table += rows(path, args.runs)
    body = (f"## Input judgement (`python -m bench.judge --runs {args.runs}`)\n\n"
            f"Median of {args.runs} runs, one image, CPU. The judge step measures contrast and the lung head's "
            "lungs and compares every figure with the card's limits; a picture refused as no chest is judged "
            "again as its negative (a second model run, inside the judge step: the refused row), to tell "
            "`appears_inverted` apart. The scores are outputs of the same model run: their cost is the "
            "difference of the two model-run columns (a graph cut back to its probabilities against the "
            f"shipped one).\n\n" + "\n".join(table))
    publish("judge", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
