"""Quantize the exported fp32 graph to int8 for CPU serving (ONNX Runtime static quantization).

    python -m training.quantize --model models/covidseg-unet-r34.onnx --output models/covidseg-unet-r34-int8.onnx

QDQ format, per-channel int8 weights, uint8 activations calibrated (MinMax) on Train images
through the shared preprocessing. The int8 graph gets its own card, saying what it was made
from; ``training.evaluate --model <int8> --update-card`` adds its Val figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.card import ModelCard
from app.pipeline.infer import PROBABILITIES, file_sha256
from app.pipeline.preprocess import preprocess_batch
from training.data import default_data_root, index_split, load_samples

CALIBRATION_CLASSES = ("COVID-19", "Normal")


class ImageReader(CalibrationDataReader):
    """Calibration batches: Train images of the recipe's classes, preprocessed as the service does."""

    def __init__(self, images: np.ndarray, input_name: str, size: int, batch_size: int = 8):
        self.batches = iter([{input_name: preprocess_batch(list(images[i:i + batch_size]), size)}
                             for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the fp32 ONNX graph (with its card)")
    p.add_argument("--output", type=Path, default=None, help="default: <model>-int8.onnx")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--calibration-images", type=int, default=128,
                   help="Train images used to calibrate, split evenly over COVID-19 and Normal")
    return p.parse_args(argv)


def calibration_images(data_root: Path, count: int) -> np.ndarray:
    """The first ``count`` Train images, half COVID-19 and half Normal, in a fixed order."""
    per_class = max(1, count // len(CALIBRATION_CLASSES))
    samples = [s for cls in CALIBRATION_CLASSES for s in index_split(data_root, "Train", [cls])[:per_class]]
    return load_samples(samples, progress=False).images


def judgement_only_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes that feed only the judgement's scores, not the probabilities: kept in fp32, so that quantization
    moves the scores no more than it moves the encoder features they read."""
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen, todo = set(), [tensor]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    segmentation = ancestors(PROBABILITIES)
    scores = set().union(*(ancestors(o.name) for o in graph.output if o.name != PROBABILITIES))
    return sorted(scores - segmentation)


def quantize(model: Path, output: Path, images: np.ndarray) -> None:
    """fp32 graph -> int8 QDQ graph (per-channel weights), keeping the model's metadata; the judgement's own
    nodes stay fp32."""
    source = onnx.load(str(model))
    input_name = source.graph.input[0].name
    size = int(source.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared))
        quantize_static(str(prepared), str(output), ImageReader(images, input_name, size),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=judgement_only_nodes(onnx.load(str(prepared)).graph))
    quantized = onnx.load(str(output))
    meta = {p.key: p.value for p in source.metadata_props}
    meta["model_name"] = f"{meta.get('model_name', model.stem)}-int8"
    meta["quantization"] = "int8 QDQ, per-channel weights, uint8 activations (MinMax calibration)"
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(output))


def int8_card(fp32: ModelCard, output: Path, calibration: int, command: str) -> ModelCard:
    """The fp32 card, re-addressed to the int8 file; its figures wait for ``training.evaluate``."""
    card = fp32.model_copy(deep=True)
    card.name, card.file, card.sha256 = f"{fp32.name}-int8", output.name, file_sha256(output)
    card.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    card.description = (f"{fp32.description} int8 (QDQ, per-channel weights) quantization of {fp32.file} "
                        f"{fp32.version} (sha256 {fp32.sha256}) for CPU serving.")
    card.export = {**fp32.export, "quantized_from": {"file": fp32.file, "version": fp32.version,
                                                     "sha256": fp32.sha256},
                   "quantization": {"command": command, "format": "QDQ", "weights": "int8 per-channel",
                                    "activations": "uint8", "calibration": "MinMax",
                                    "calibration_images": calibration, "calibration_split": "Train"}}
    card.evaluation = None
    card.input_judgement = None  # its own limits, on its own scores: training.judge_limits
    card.replaces = None
    return card


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or args.model.with_name(f"{args.model.stem}-int8.onnx")
    fp32 = ModelCard.load(args.model)
    fp32.check_describes(file_sha256(args.model))
    images = calibration_images(args.data_root or default_data_root(), args.calibration_images)
    quantize(args.model, output, images)
    command = "python -m training.quantize " + " ".join(argv if argv is not None else sys.argv[1:])
    int8_card(fp32, output, len(images), command).save(output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, from {args.model.stat().st_size / 1e6:.1f} MB) "
          f"and its card; evaluate it with: python -m training.evaluate --model {output} --update-card")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
