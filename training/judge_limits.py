"""Set a model's input judgement limits and measure them (``app.pipeline.judge``).

    python -m training.judge_limits --model models/covidseg-unet-r34.onnx --out docs/judgement --update-card

Every figure of the judgement is measured, through the service's engine, on three sets:

- **Train** (every class): where chest radiographs lie, the calibration (the scores themselves were
  fitted on these images by ``training.export --judgement``);
- **Val** (every class): each limit is set here, at the worst Val value pushed out by a margin
  (:data:`MARGINS`), so that no Val image of any class is refused and unseen chest radiographs have room;
- the **non-chest set** (``tests/nonchest.py``: generated pictures, inverted, turned and cropped chests,
  photographs, pydicom's CT/MR/US/NM/SC files read through the DICOM path with the selection rules
  ignored): the share refused, and each case that was not.

Writes the limits and figures into the card (``--update-card``), ``judgement.json`` and plots of each
figure's distribution per set with its limit (``--out``), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.card import InputJudgement
from app.core.config import DEFAULT_MODEL_PATH
from app.engine import Engine
from app.pipeline.errors import PipelineError
from app.pipeline.judge import JudgeLimits, Judgement, judged
from app.pipeline.load import LoadedImage
from training.data import CLASSES, default_data_root, index_split, load_samples
from training.evaluate import as_image, card_to_update, engine_for

#: Each limit: the figure it bounds, the side a chest radiograph lies on, and how far past the worst Val image
#: it is set: a factor of that value (``times``) or a step beyond it (``plus``, for the logit and the
#: probability). The margins are wide where unseen chests were seen to lie further out than Val's worst: the
#: Train images scored out of fold while the scores were designed (a one-off 5-fold check; README) reached a
#: feature distance 1.5 times Val's worst (a small child's chest in a frame) and frontal scores far below it
#: (a negative, an upside-down and a cropped image of the data set itself, which the judgement should refuse).
MARGINS = {"min_contrast": ("contrast", "above", "times", 0.25),
           "max_feature_distance": ("feature_distance", "below", "times", 1.6),
           "min_frontal_score": ("frontal_score", "above", "plus", 1.5),
           "min_lung_share": ("lung_share", "above", "times", 0.5),
           "min_lung_confidence": ("lung_confidence", "above", "plus", 0.04)}
#: Above this many per-cent of the non-chest set refused, the judgement meets issue 27's bar (95 %).
REQUIRED_REFUSED = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.judge_limits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/judgement"))
    p.add_argument("--train-every", type=int, default=1, help="every n-th Train image (1: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--update-card", action="store_true", help="write the limits and figures into the card")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def figures_of(judgement: Judgement) -> dict[str, float]:
    """The judgement's figures, with the lung share (both sides) that ``min_lung_share`` bounds."""
    return {**judgement.figures(), "lung_share": judgement.lung_share_left + judgement.lung_share_right}


def judge_all(engine: Engine, images: list[LoadedImage], batch_size: int, desc: str,
              progress: bool) -> list[Judgement]:
    """Each image's judgement figures (refusals are made again once the limits are set: :func:`with_limits`)."""
    found: list[Judgement] = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = engine.preprocess(images[i:i + batch_size])
        found += engine.measured(batch, engine.infer(batch))
    return found


def split_images(data_root: Path, split: str, every: int = 1) -> tuple[list[str], list[LoadedImage]]:
    """The split's images (every ``every``-th) and their names as ``class/file``."""
    samples = index_split(data_root, split, CLASSES)[::every]
    names = [f"{s.class_name}/{s.name}" for s in samples]
    return names, [as_image(g) for g in load_samples(samples, progress=False).images]


def nonchest_images(engine: Engine) -> Iterator[tuple[str, LoadedImage]]:
    """The non-chest set as the service reads it (DICOM selection rules ignored: the judgement alone); a case
    the read step refuses (a pydicom test file whose pixel data no decoder reads) is left out."""
    from tests.nonchest import cases

    for case in cases():
        try:
            yield case.name, engine.decode(engine.load(case.data, case.filename))
        except PipelineError:
            continue


def set_limits(val: list[dict[str, float]]) -> JudgeLimits:
    """Each limit at the worst Val value pushed out by its margin."""
    limits: dict[str, float] = {}
    for limit, (figure, side, kind, margin) in MARGINS.items():
        values = np.array([f[figure] for f in val if figure in f])
        if not len(values):
            continue
        worst = float(values.min() if side == "above" else values.max())
        beyond = worst * margin if kind == "times" else worst - margin if side == "above" else worst + margin
        limits[limit] = round(beyond, 4)
    return JudgeLimits(**limits)


def summary(figures: list[dict[str, float]], judgements: list[Judgement]) -> dict[str, Any]:
    refused = [j.refusal.code for j in judgements if j.refusal is not None]
    ranges = {k: [round(float(min(f[k] for f in figures)), 4), round(float(max(f[k] for f in figures)), 4)]
              for k in figures[0]}
    return {"images": len(judgements), "refused": len(refused),
            "by_code": {c: refused.count(c) for c in sorted(set(refused))}, "ranges": ranges}


def plot(figures: dict[str, list[dict[str, float]]], limits: JudgeLimits, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MARGINS), figsize=(5 * len(MARGINS), 3.6))
    for ax, (limit, (figure, *_)) in zip(axes, MARGINS.items()):
        for name, rows in figures.items():
            values = [r[figure] for r in rows if figure in r]
            if values:
                ax.hist(values, bins=40, alpha=0.5, density=True, label=name)
        value = getattr(limits, limit)
        if value is not None:
            ax.axvline(value, color="k", linestyle="--", label=f"{limit} {value:g}")
        ax.set_title(figure)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "judgement_figures.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def with_limits(engine: Engine, limits: JudgeLimits, images: list[LoadedImage],
                judgements: list[Judgement]) -> list[Judgement]:
    """Each judgement under ``limits``; an image they refuse is judged again by the engine as the service would
    (with its inversion check: a negative is ``appears_inverted``)."""
    found = [judged(j, limits) for j in judgements]
    for i, judgement in enumerate(found):
        if judgement.refusal is not None:
            batch = engine.preprocess([images[i]])
            found[i] = engine.judge(batch, engine.infer(batch), [images[i]])[0]
    return found


def engine_with_limits(engine: Engine, limits: JudgeLimits) -> Engine:
    """The engine with ``limits`` in its card (a model without a card has no limits to set)."""
    if engine.card is None:
        raise SystemExit("the model has no card: export it with its card first")
    engine.card = engine.card.model_copy(update={"input_judgement": InputJudgement(limits=limits.as_dict(),
                                                                                   command="")})
    return engine


def measured(engine: Engine, data_root: Path, every: int, batch_size: int, progress: bool) -> dict[str, Any]:
    """Every set's images (named) and their judgements under the engine's present limits."""
    sets = {split: split_images(data_root, split, every if split == "Train" else 1) for split in ("Train", "Val")}
    named = list(nonchest_images(engine))
    sets["non-chest"] = ([name for name, _ in named], [im for _, im in named])
    return {name: (names, images, judge_all(engine, images, batch_size, name, progress))
            for name, (names, images) in sets.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    engine = engine_for(args.model, 0, None)
    sets = measured(engine, args.data_root or default_data_root(), args.train_every, args.batch_size,
                    not args.no_progress)
    figures = {name: [figures_of(j) for j in js] for name, (_, _, js) in sets.items()}
    limits = set_limits(figures["Val"])
    engine = engine_with_limits(engine, limits)
    final = {name: with_limits(engine, limits, images, js) for name, (_, images, js) in sets.items()}
    report = {"limits": limits.as_dict(), "sets": {n: summary(figures[n], final[n]) for n in final},
              "not_refused": [n for n, j in zip(sets["non-chest"][0], final["non-chest"]) if j.refusal is None],
              "refused_chests": {split: {n: j.refusal.code for n, j in zip(sets[split][0], final[split]) if j.refusal}
                                 for split in ("Train", "Val")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "judgement.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(figures, limits, args.out)
    print_table(report)
    if args.update_card:
        write_card(args, report, "python -m training.judge_limits " + " ".join(argv if argv is not None else sys.argv[1:]))
    refused = report["sets"]["non-chest"]["refused"] / report["sets"]["non-chest"]["images"]
    return 0 if report["sets"]["Val"]["refused"] == 0 and refused >= REQUIRED_REFUSED else 1


def print_table(report: dict[str, Any]) -> None:
    print("| set | images | refused | by code |\n|---|---:|---:|---|")
    for name, s in report["sets"].items():
        print(f"| {name} | {s['images']} | {s['refused']} | {s['by_code']} |")
    print("limits:", report["limits"])
    print("non-chest not refused:", ", ".join(report["not_refused"]) or "none")
    print("chest radiographs refused:", report["refused_chests"])


def write_card(args: argparse.Namespace, report: dict[str, Any], command: str) -> None:
    from app.pipeline.infer import file_sha256

    card = card_to_update(args.model, file_sha256(args.model), None)
    card.input_judgement = InputJudgement(
        limits=report["limits"], command=command,
        scores=card.export.get("judgement_scores"),
        figures={name: {k: v for k, v in s.items()} for name, s in report["sets"].items()},
        not_refused=report["not_refused"], refused_chests=report["refused_chests"])
    card.save(args.model)
    print(f"updated the card of {args.model}")


if __name__ == "__main__":
    raise SystemExit(main())
