"""Export a training checkpoint to ONNX, check it against PyTorch on real images, write the model card.

    python -m training.export --checkpoint runs/shipped/best.pt --output models/covidseg-unet-r34.onnx

The graph takes the preprocessed batch ``image`` (N, 3, 256, 256) and returns
``probabilities`` (N, 2, 256, 256): channel 0 infection, channel 1 lung (sigmoid applied), and, with
``--judgement``, the input judgement's scores fitted here on the Train split (``training.judgement``):
``feature_distance`` (N,), the Mahalanobis distance of the image's pooled deepest encoder features from
those of the Train images, and ``frontal_score`` (N,), a linear probe's logit on the features over a 4x4
grid of the image (upright whole chests against turned, cropped and inverted ones).
Export fails (non-zero exit) when ONNX Runtime and PyTorch differ by 1e-4 or more.

A shipped graph can be exported again without its checkpoint (its weights recovered by
``training.onnx_weights``, its card carried over; a new version):

    python -m training.export --from-onnx models/covidseg-unet-r34.onnx --judgement \
        --version 2.1.1 --output models/covidseg-unet-r34.onnx
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from app.pipeline.infer import OnnxSegmenter, file_sha256
from app.pipeline.preprocess import INPUT_SIZE, preprocess_batch
from app.card import ModelCard, Replaced
from app.core.config import DEFAULT_MODEL_NAME, DEFAULT_MODEL_PATH
from training.data import CLASSES, default_data_root, index_split, limit_per_class, load_samples

from app.pipeline.infer import JUDGEMENT_SCORES, PROBABILITIES
from training.judgement import fit_judgement
from training.model import OUTPUT_CHANNELS, FeatureDistance, FrontalScore, JudgedModel, ProbabilityModel, build_model
from training.onnx_weights import load_onnx_weights

#: The input judgement's fitted parts, as JudgedModel takes them.
JudgementParts = tuple[FeatureDistance, FrontalScore]

PARITY_TOLERANCE = 1e-4
#: ``--augment`` was a yes/no flag before the mild/strong presets.
AUGMENT_NAMES = {True: 'mild', False: 'none'}
CITATIONS = [
    'A. M. Tahir et al., "COVID-19 Infection Localization and Severity Grading from Chest X-ray Images", '
    "Computers in Biology and Medicine 139 (2021) 105002.",
    'A. M. Tahir et al., "COVID-QU-Ex", Kaggle, 2021, doi:10.34740/kaggle/dsv/3122898.',
    'A. Degerli et al., "COVID-19 infection map generation and detection from chest X-ray images", '
    "Health Inf Sci Syst 9, 15 (2021).",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="best.pt written by training.train")
    source.add_argument("--from-onnx", type=Path, help="an exported graph with its card: its weights and training "
                                                       "record, exported again (e.g. with --judgement)")
    p.add_argument("--judgement", action="store_true",
                   help="add the input judgement's outputs feature_distance and frontal_score, fitted on Train")
    p.add_argument("--output", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--default-threshold", type=float, default=0.5)
    p.add_argument("--region-peak-threshold", type=float, default=0.0,
                   help="the card's region rule: keep a predicted region only when its peak reaches this")
    p.add_argument("--data-root", type=Path, default=None, help="where to take real images for the parity check")
    p.add_argument("--parity-images", type=int, default=4, help="images per class for the parity check")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--attempt", action="append", default=[], help="a line for the card's 'what was tried' (repeatable)")
    p.add_argument("--replaces", type=Path, default=None,
                   help="card JSON of the model this one replaces: its attempts are kept (before --attempt lines) "
                        "and its version and sha256 recorded")
    return p.parse_args(argv)


def load_checkpoint_model(checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained network (eval mode, fp32) and the checkpoint's metadata."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = state["config"]
    net = build_model(config.get("encoder", "resnet34"), None)
    net.load_state_dict(state["model"])
    net.eval()
    return net, state


def export_onnx(net: torch.nn.Module, output: Path, size: int, opset: int, metadata: dict[str, str],
                judgement: JudgementParts | None = None) -> None:
    """Write the probability graph (with the judgement's scores when given) with a dynamic batch axis and the
    metadata the service reads."""
    output.parent.mkdir(parents=True, exist_ok=True)
    model = (ProbabilityModel(net) if judgement is None else JudgedModel(net, *judgement)).eval()
    names = [PROBABILITIES] + (list(JUDGEMENT_SCORES) if judgement is not None else [])
    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(output), input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=opset, dynamo=False)
    graph = onnx.load(str(output))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(output))


def parity_check(net: torch.nn.Module, onnx_path: Path, images: list[np.ndarray], size: int = INPUT_SIZE,
                 judgement: JudgementParts | None = None) -> float:
    """Max absolute difference between PyTorch and ONNX Runtime on ``images``: of the probabilities, and of
    each judgement score relative to its size (at least 1)."""
    batch = preprocess_batch(images, size)
    got = OnnxSegmenter(onnx_path, providers="CPUExecutionProvider").run(batch)
    with torch.no_grad():
        if judgement is None:
            return float(np.abs(ProbabilityModel(net).eval()(torch.from_numpy(batch)).numpy() - got.probabilities).max())
        probabilities, *scores = (t.numpy() for t in JudgedModel(net, *judgement).eval()(torch.from_numpy(batch)))
    relative = [np.abs(s - got.scores[n]) / np.maximum(np.abs(s), 1.0) for n, s in zip(JUDGEMENT_SCORES, scores)]
    return float(max(np.abs(probabilities - got.probabilities).max(), *(r.max() for r in relative)))


def describe_recipe(config: dict[str, Any]) -> str:
    """One line with the settings of one training run."""
    size = config.get("image_size", INPUT_SIZE)
    return (f"COVID+Normal (normal_ratio {config.get('normal_ratio')}), loss Dice+BCE on both heads "
            f"(lung weight {config.get('lung_weight')}, Normal-image BCE weight {config.get('negative_weight', 1.0)}), "
            f"{config.get('optimizer')} lr {config.get('lr')} schedule {config.get('schedule')} "
            f"(warm-up {config.get('warmup_fraction')}), weight decay {config.get('weight_decay')}, "
            f"batch {config.get('batch_size')}, {size}x{size}, augmentation {AUGMENT_NAMES.get(config.get('augment'), config.get('augment'))}, "
            f"precision {config.get('precision_resolved')}, device {config.get('device')}"
            + (f", from {p['name']} {p['version']} with BatchNorm statistics frozen"
               if (p := config.get("parent") or {}).get("model") else "")
            + (f", EMA of the weights (decay {config['ema_decay']}) validated and exported" if config.get("ema_decay") else "")
            + (f", schedule re-planned from {r['from_epochs']} to {config.get('epochs')} epochs after epoch "
               f"{r['after_epoch']}" if (r := config.get("rescheduled")) else ""))


def training_phases(config: dict[str, Any], selected_epoch: int | None) -> list[dict[str, Any]]:
    """Every training run that produced the weights, oldest first.

    A run started with ``--init-from`` keeps its parent's config (a checkpoint) or its card's
    phases (an exported model), so the chain can be replayed from the card alone.
    """
    phases = []
    current: dict[str, Any] | None = config
    epoch = selected_epoch
    while current is not None:
        phases.append({"command": current.get("command"), "recipe": describe_recipe(current),
                       "epochs": current.get("epochs"), "weights_from_epoch": epoch,
                       "images_per_epoch": current.get("images_per_epoch")})
        parent = current.get("parent") or {}
        phases.extend(parent.get("phases", [])[::-1])
        current, epoch = parent.get("config"), parent.get("epoch")
    return phases[::-1]


FROM_SCRATCH = "Trained from scratch (no ImageNet weights could be downloaded where it was trained)."
#: What every card of this project says the model cannot claim.
LIMITATIONS = [
    "Trained and validated on COVID-QU-Ex only (256x256 PNGs derived from several public sources); "
    "performance on other scanners, paediatric or lateral views is unknown.",
    "Non-COVID pneumonia is not labelled in the data: infection predicted on non-COVID pneumonia is "
    "not evaluated for correctness, only measured as PPAR.",
    "Figures are on the Val split (used for model selection); the Test split is held back for "
    "independent evaluation.",
]


def training_record(config: dict[str, Any], state: dict[str, Any], history_file: Path) -> dict[str, Any]:
    """The card's training section: every phase, the run's config and its per-epoch history."""
    return {
        "phases": training_phases(config, state.get("epoch")),
        "config": config,
        "train_counts": config.get("train_counts"),
        "val_counts": config.get("val_counts"),
        "images_per_epoch": config.get("images_per_epoch"),
        "normal_per_epoch": config.get("normal_per_epoch"),
        "epochs": config.get("epochs"),
        "selected_epoch": state.get("epoch"),
        "selection": f"best Val COVID-19 Dice among epochs with Val Normal p95 PPAR <= {config.get('max_normal_p95')}",
        "selected_epoch_val_metrics_pytorch": state.get("metrics"),
        "history": json.loads(history_file.read_text()) if history_file.exists() else [],
    }


def build_card(args: argparse.Namespace, state: dict[str, Any], max_diff: float, parity_images: int,
               replaced: ModelCard | None, command: str) -> ModelCard:
    """The card of a freshly exported graph: what it is, how it was trained and exported."""
    config = state["config"]
    size = int(config.get("image_size", INPUT_SIZE))
    return ModelCard.model_validate({
        "name": args.name,
        "version": args.version,
        "file": args.output.name,
        "sha256": file_sha256(args.output),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": "Segments COVID-19 lung infection and the lung field on frontal chest X-rays.",
        "architecture": f"U-Net with {config.get('encoder', 'resnet34')} encoder (segmentation-models-pytorch 0.6.0), "
                        f"2 output channels {list(OUTPUT_CHANNELS)}, encoder weights: {config.get('encoder_weights')}",
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "description": f"(N, 3, {size}, {size}) float32: 8-bit grayscale resized to {size}x{size}, "
                                 "scaled to [0,1] then 2*(x-0.5), replicated to 3 channels"},
        "output": {"name": "probabilities", "shape": ["batch", 2, size, size], "channels": list(OUTPUT_CHANNELS),
                   "description": f"(N, 2, {size}, {size}) probabilities: channel 0 infection, channel 1 lung"},
        "default_threshold": args.default_threshold,
        "region_peak_threshold": args.region_peak_threshold,
        "threshold_guidance": "0.5 conservative; 0.25 more sensitive on COVID-19 (source recipe's tuned point)",
        "intended_use": "Research and decision support on frontal chest X-rays; not a diagnostic device.",
        "training": training_record(config, state, args.checkpoint.parent / "history.json"),
        "export": {
            "command": command,
            "opset": args.opset,
            "parity_max_abs_diff": max_diff,
            "parity_images": parity_images,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
        "attempts": (replaced.attempts if replaced else []) + args.attempt,
        "replaces": {"version": replaced.version, "sha256": replaced.sha256} if replaced else None,
        "limitations": ([FROM_SCRATCH] if config.get("encoder_weights") in (None, "none", "") else []) + LIMITATIONS,
        "citations": CITATIONS,
    })


def graph_net(model_path: Path, encoder: str) -> torch.nn.Module:
    """The network of an exported graph, its weights recovered (``training.onnx_weights``)."""
    net = build_model(encoder, None)
    load_onnx_weights(net, model_path)
    return net.eval()


def carried_card(source: ModelCard, args: argparse.Namespace, max_diff: float, images: int, command: str,
                 judgement: bool) -> ModelCard:
    """The card of a graph exported again from ``source``: its training record and figures carried over."""
    card = source.model_copy(deep=True)
    card.version, card.file = args.version, args.output.name
    card.sha256 = file_sha256(args.output)
    card.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    card.replaces = Replaced(version=source.version, sha256=source.sha256)
    card.export = {**source.export, "command": command, "parity_max_abs_diff": max_diff, "parity_images": images,
                   "torch": torch.__version__, "onnx": onnx.__version__, "from_onnx": {
                       "file": source.file, "version": source.version, "sha256": source.sha256}}
    if judgement:
        card.export["outputs"] = [PROBABILITIES, *JUDGEMENT_SCORES]
        card.export["judgement_scores"] = JUDGEMENT_SCORES_DOC
    card.attempts = source.attempts + args.attempt
    return card


JUDGEMENT_SCORES_DOC = {
    "feature_distance": "Mahalanobis distance of the image's deepest encoder features (global average pooled, 512) "
                        "from their mean over the Train split (every class), covariance shrunk by 1 % towards its "
                        "mean variance",
    "frontal_score": "logit of a logistic regression (L2, weight decay 0.01) on the deepest encoder features averaged "
                     "over a 4x4 grid of the image (16 x 512, standardised): every Train image against one in 7 "
                     "turned 90/180/270 degrees, upside down, inverted, halved and quartered (training.judgement)"}


def export_again(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--from-onnx``: the shipped graph's network exported again, with the judgement's scores when asked."""
    source = ModelCard.load(args.from_onnx)
    config = source.training.config
    size = int(config.get("image_size", INPUT_SIZE))
    net = graph_net(args.from_onnx, config.get("encoder", "resnet34"))
    data_root = args.data_root or default_data_root()
    judgement = fit_judgement(net, data_root, size) if args.judgement else None
    images = list(load_samples(limit_per_class(index_split(data_root, "Val", CLASSES), args.parity_images),
                               progress=False).images)
    max_diff = exported_and_checked(net, args, size, images, judgement)
    if max_diff is None:
        return 1
    command = "python -m training.export " + " ".join(argv if argv is not None else sys.argv[1:])
    carried_card(source, args, max_diff, len(images), command, judgement is not None).save(args.output)
    print(f"wrote {args.output} and its card; evaluate it again with training.evaluate --update-card")
    return 0


def graph_metadata(args: argparse.Namespace, size: int) -> dict[str, str]:
    return {"model_name": args.name, "model_version": args.version, "input_size": str(size),
            "output_channels": ",".join(OUTPUT_CHANNELS),
            "preprocessing": "8-bit grayscale, resized to 256x256, x/255, 2*(x-0.5), replicated to 3 channels"}


def exported_and_checked(net: torch.nn.Module, args: argparse.Namespace, size: int, images: list[np.ndarray],
                         judgement: JudgementParts | None = None) -> float | None:
    """Export to a staging file beside ``args.output``, check parity, and only then put it in place: returns the
    parity difference, or None when the check failed (the staged graph removed; whatever was at the output,
    the graph this one was exported from included, left as it was)."""
    staging = args.output.with_name(f".{args.output.stem}.staging{args.output.suffix}")
    export_onnx(net, staging, size, args.opset, graph_metadata(args, size), judgement)
    max_diff = parity_check(net, staging, images, size, judgement)
    print(f"parity on {len(images)} real Val images: max |onnx - torch| = {max_diff:.2e}")
    if max_diff < PARITY_TOLERANCE:
        os.replace(staging, args.output)
        return max_diff
    print(f"error: ONNX and PyTorch differ by {max_diff:.2e} >= {PARITY_TOLERANCE}; nothing written to "
          f"{args.output}", file=sys.stderr)
    staging.unlink()
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_onnx is not None:
        return export_again(args, argv)
    # Read before exporting: the replaced card is usually the one this export overwrites.
    replaced = ModelCard.model_validate_json(args.replaces.read_text()) if args.replaces else None
    net, state = load_checkpoint_model(args.checkpoint)
    config = state["config"]
    size = int(config.get("image_size", INPUT_SIZE))
    data_root = args.data_root or Path(config.get("data_root") or default_data_root())
    judgement = fit_judgement(net, data_root, size) if args.judgement else None
    samples = limit_per_class(index_split(data_root, "Val", CLASSES), args.parity_images)
    images = list(load_samples(samples, progress=False).images)
    max_diff = exported_and_checked(net, args, size, images, judgement)
    if max_diff is None:
        return 1

    card = build_card(args, state, max_diff, len(images), replaced,
                      "python -m training.export " + " ".join(argv if argv is not None else sys.argv[1:]))
    card.save(args.output)
    print(f"wrote {args.output} and its card")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
