"""Evaluate the exported ONNX model on a split, through the service's own engine (app.engine: its
preprocess and infer steps give the probabilities the sweep needs, its postprocess the masks drawn).

    python -m training.evaluate --model models/covidseg-unet-r34.onnx --split Val --out reports/val --update-card

COVID-19: precision, recall, Dice (= F1) and IoU from pixel counts pooled over the split
(as the source report does), plus mean per-image Dice, at 0.5, 0.25 and a sweep.
Normal and Non-COVID (empty ground truth): PPAR per image as mean, median, p95 and the
share of images with any predicted pixel. Lung Dice for every class.
COVID-19 errors at 0.5: by annotated extent (pooled Dice, share of wrong pixels) and the share of
wrong pixels near an annotated outline.
Writes ``report.json`` and plots: PPAR distributions, threshold sweep, overlay grid, errors by extent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.core.config import DEFAULT_MODEL_PATH
from app.card import CardError, Evaluation, ModelCard
from app.engine import Engine
from app.engine.engine import load_card
from app.pipeline.infer import TTA_MODES, OnnxSegmenter
from app.pipeline.load import LoadedImage
from app.pipeline.postprocess import Segmentation, resize_probability
from app.pipeline.render import overlay_rgb
from training.data import CLASSES, LoadedSamples, default_data_root, index_split, limit_per_class, load_samples
from training.scoring import (errors_by_extent, infection_scores, lung_dice, near_boundary_error_share,
                              ppar_scores)

REPORT_THRESHOLDS = (0.5, 0.25)
SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--split", default="Val", help="Train or Val (Test is held back for independent evaluation)")
    p.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    p.add_argument("--out", type=Path, default=Path("reports/val"))
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation (flip: mean with the mirrored image), as the service's tta=")
    p.add_argument("--region-peak-threshold", type=float, default=None,
                   help="keep a predicted region only when its peak probability reaches this (default: the "
                        "card's rule, as the service applies it; 0: every region)")
    p.add_argument("--update-card", action="store_true",
                   help="write the figures into the model's card (with --tta flip: as the card's TTA figures)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def engine_for(model_path: Path, threads: int, peak: float | None) -> Engine:
    """The engine over the model, with its card's region rule (or ``peak``; a card that is missing,
    invalid or of another file is only warned about: evaluating is not serving)."""
    model = OnnxSegmenter(model_path, providers="auto", intra_op_threads=threads)
    return Engine(model=model, card=load_card(model_path, model.info.sha256, verify=False), region_peak_override=peak)


def as_image(gray: np.ndarray) -> LoadedImage:
    """A dataset image as the engine takes it (the data set's images are 8-bit gray PNGs)."""
    return LoadedImage(gray, "PNG", "L")


def predict_class(model: Engine | OnnxSegmenter, data: LoadedSamples, batch_size: int, progress: bool,
                  desc: str, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Infection and lung probabilities at each image's own resolution: (N, H, W) float32 each, by the
    engine's preprocess and infer steps (a bare model runs in an engine of its own)."""
    engine = model if isinstance(model, Engine) else Engine(model=model, card=None)
    inf, lung = [], []
    h, w = data.images.shape[1:]
    for i in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", disable=not progress):
        probs = engine.infer(engine.preprocess([as_image(g) for g in data.images[i:i + batch_size]]), tta)
        for p in probs.probabilities:
            inf.append(resize_probability(p[0], w, h))
            lung.append(resize_probability(p[1], w, h))
    return np.stack(inf), np.stack(lung)


def segmentation_of(engine: Engine, arrays: dict[str, Any], i: int, threshold: float) -> Segmentation:
    """Image ``i``'s masks at ``threshold``, as the service makes them: the engine's postprocess (under its
    region rule) of the probabilities kept at the image's size."""
    probabilities = np.stack([arrays["inf"][i], arrays["lung"][i]])
    return engine.postprocess(probabilities[None], [as_image(arrays["data"].images[i])], threshold)[0]


def evaluate(engine: Engine, data_root: Path, split: str, classes: list[str], limit: int | None,
             batch_size: int, progress: bool, tta: str = "none") -> tuple[dict[str, Any], dict[str, Any]]:
    """Compute the report (masks under the engine's region rule); also returns the per-class arrays the
    plots need."""
    model, peak = engine.model, engine.region_peak_threshold
    report: dict[str, Any] = {"split": split, "model": {"name": model.info.name, "version": model.info.version,
                                                        "sha256": model.info.sha256},
                              "tta": tta, "region_peak_threshold": peak, "counts": {}, "covid": {}, "ppar": {},
                              "lung_dice": {}, "sweep": []}
    arrays: dict[str, Any] = {}
    for cls in classes:
        data = load_samples(limit_per_class(index_split(data_root, split, [cls]), limit), progress=progress)
        inf, lung = predict_class(engine, data, batch_size, progress, f"{split}/{cls}", tta)
        arrays[cls] = {"data": data, "inf": inf, "lung": lung}
        report["counts"][cls] = len(data)
        report["lung_dice"][cls] = lung_dice(lung, data.lung)
        report["ppar"][cls] = {str(t): ppar_scores(inf, t, peak) for t in REPORT_THRESHOLDS}
        if cls == "COVID-19":
            report["covid"] = {str(t): infection_scores(inf, data.infection, t, peak) for t in REPORT_THRESHOLDS}
            report["covid_errors"] = {"threshold": 0.5,
                                      "by_extent": errors_by_extent(inf, data.infection, 0.5, peak),
                                      "near_outline_share": near_boundary_error_share(inf, data.infection, 0.5, peak)}
    for t in SWEEP:
        row: dict[str, float] = {"threshold": t}
        if "COVID-19" in arrays:
            m = infection_scores(arrays["COVID-19"]["inf"], arrays["COVID-19"]["data"].infection, t, peak)
            row.update({k: m[k] for k in ("precision", "recall", "dice", "iou")})
        for cls in arrays:
            if cls != "COVID-19":
                row[f"{cls}_ppar_p95"] = ppar_scores(arrays[cls]["inf"], t, peak)["p95"]
        report["sweep"].append(row)
    return report, arrays


def _save(fig, path: Path, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_ppar_distributions(engine: Engine, arrays: dict[str, Any], split: str, threshold: float, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arrays), figsize=(5 * len(arrays), 4), squeeze=False)
    for ax, (cls, a) in zip(axes[0], arrays.items()):
        values = 100 * np.array([segmentation_of(engine, a, i, threshold).ppar for i in range(len(a["inf"]))])
        ax.hist(values, bins=40, range=(0, max(1.0, float(values.max()) if values.size else 1.0)), color="tab:red")
        ax.set(title=f"{cls} (n={len(values)})", xlabel=f"PPAR % at threshold {threshold}", ylabel="images")
    fig.suptitle(f"PPAR per image, {split}")
    return _save(fig, path)


def plot_threshold_sweep(sweep: list[dict[str, float]], split: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ts = [r["threshold"] for r in sweep]
    for key in ("precision", "recall", "dice", "iou"):
        if key in sweep[0]:
            ax.plot(ts, [r[key] for r in sweep], "o-", ms=3, label=f"COVID-19 {key}")
    ax2 = ax.twinx()
    for key in sweep[0]:
        if key.endswith("_ppar_p95"):
            ax2.plot(ts, [100 * r[key] for r in sweep], "--", label=f"{key.split('_')[0]} p95 PPAR %")
    ax.set(xlabel="threshold", ylim=(0, 1), title=f"Threshold sweep, {split}")
    ax2.set(ylabel="p95 PPAR %")
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_errors_by_extent(errors: dict[str, Any], split: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = errors["by_extent"]
    labels = [f"{100 * r['extent'][0]:g}-{100 * r['extent'][1]:g}%\n(n={r['images']})" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x - 0.2, [r["dice"] or 0.0 for r in rows], 0.4, label="pooled Dice")
    ax.bar(x + 0.2, [r["error_share"] for r in rows], 0.4, label="share of all wrong pixels")
    ax.set(xticks=x, xticklabels=labels, ylim=(0, 1), xlabel="annotated infection, share of the image",
           title=f"COVID-19 {split} at t={errors['threshold']}: errors by extent "
                 f"({100 * errors['near_outline_share']:.0f}% of wrong pixels within 4 px of an outline)")
    ax.title.set_fontsize(9)
    ax.legend()
    return _save(fig, path)


def plot_overlays(engine: Engine, arrays: dict[str, Any], threshold: float, per_class: int, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    rows = [(cls, i) for cls, a in arrays.items() for i in range(min(per_class, len(a["data"])))]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (cls, i) in enumerate(rows):
        a = arrays[cls]
        img = a["data"].images[i]
        gt = overlay_rgb(img, a["data"].infection[i], a["data"].lung[i])
        seg = segmentation_of(engine, a, i, threshold)
        pred = overlay_rgb(img, seg.infection_mask, seg.lung_mask)
        for c, (title, pic) in enumerate((("image", img), ("ground truth", gt), (f"prediction t={threshold}", pred))):
            axes[r][c].imshow(pic, cmap="gray" if pic.ndim == 2 else None)
            axes[r][c].set_title(f"{cls} {a['data'].samples[i].name}: {title}" if c == 0 else title, fontsize=8)
            axes[r][c].axis("off")
    return _save(fig, path, dpi=80)


def plot_report(engine: Engine, report: dict[str, Any], arrays: dict[str, Any], out: Path, threshold: float = 0.5,
                overlays_per_class: int = 4) -> list[Path]:
    """PPAR distributions, the threshold sweep and an overlay grid (masks by the engine), as PNGs in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    written = [plot_ppar_distributions(engine, arrays, report["split"], threshold, out / "ppar_distributions.png"),
               plot_threshold_sweep(report["sweep"], report["split"], out / "threshold_sweep.png"),
               plot_overlays(engine, arrays, threshold, overlays_per_class, out / "overlays.png")]
    if "covid_errors" in report:
        written.append(plot_errors_by_extent(report["covid_errors"], report["split"], out / "errors_by_extent.png"))
    return [p for p in written if p is not None]


def card_to_update(model_path: Path, sha256: str, peak: float | None) -> ModelCard:
    """The card ``--update-card`` will write, checked before any work: it describes this file, and
    its figures will be under its own region rule (what the service delivers)."""
    card = ModelCard.load(model_path)
    card.check_describes(sha256)
    if peak is not None and peak != card.region_peak_threshold:
        raise CardError(f"--update-card needs the card's region rule ({card.region_peak_threshold:g}), not {peak:g}")
    return card


def print_summary(report: dict[str, Any]) -> None:
    for cls, th in report["ppar"].items():
        print(f"{cls:10s} PPAR@0.5 median {100 * th['0.5']['median']:.3f}% p95 {100 * th['0.5']['p95']:.3f}%  "
              f"lung Dice {report['lung_dice'][cls]:.4f}")
    for t, m in report["covid"].items():
        print(f"COVID-19 @ {t}: precision {m['precision']:.4f} recall {m['recall']:.4f} Dice {m['dice']:.4f} "
              f"IoU {m['iou']:.4f} mean image Dice {m['mean_image_dice']:.4f}")
    if "covid_errors" in report:
        errors = report["covid_errors"]
        print(f"COVID-19 @ {errors['threshold']}: {100 * errors['near_outline_share']:.0f}% of wrong pixels within "
              "4 px of an outline; by annotated extent: " + ", ".join(
                  f"{100 * r['extent'][0]:g}-{100 * r['extent'][1]:g}% Dice {r['dice'] or 0:.3f} "
                  f"({100 * r['error_share']:.0f}% of errors)" for r in errors["by_extent"]))


def write_figures(card: ModelCard, report: dict[str, Any], tta: str) -> bool:
    """The report's figures into ``card`` (plain, or as its TTA figures); False when that cannot be."""
    figures = {k: report[k] for k in ("split", "counts", "covid", "ppar", "lung_dice", "sweep",
                                      "region_peak_threshold")}
    if tta == "none":
        card.evaluation = Evaluation(command=report["command"], tta=card.evaluation.tta if card.evaluation else None,
                                     **figures)
    elif card.evaluation is None:
        print("error: evaluate without --tta first: the TTA figures sit beside the plain ones", file=sys.stderr)
        return False
    else:
        card.evaluation.tta = {**(card.evaluation.tta or {}), tta: {**figures, "command": report["command"]}}
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.split.lower() == "test":
        print("note: the Test split is held back for independent evaluation; select models on Val.", file=sys.stderr)
    engine = engine_for(args.model, args.threads, args.region_peak_threshold)
    try:
        card = (card_to_update(args.model, engine.model.info.sha256, args.region_peak_threshold)
                if args.update_card else None)
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report, arrays = evaluate(engine, args.data_root or default_data_root(), args.split, args.classes, args.limit,
                              args.batch_size, not args.no_progress, args.tta)
    report["command"] = "python -m training.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    plots = plot_report(engine, report, arrays, args.out)
    print_summary(report)
    print(f"wrote {args.out / 'report.json'} and {', '.join(p.name for p in plots)}")
    if card is not None:
        if not write_figures(card, report, args.tta):
            return 1
        card.save(args.model)
        print(f"updated the card of {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
