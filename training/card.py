"""The model card: one JSON file beside the ONNX graph, rendered to Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def card_json_path(model_path: Path) -> Path:
    return model_path.with_suffix(".card.json")


def card_markdown_path(model_path: Path) -> Path:
    return model_path.with_suffix(".card.md")


def load_card(model_path: Path) -> dict[str, Any]:
    return json.loads(card_json_path(model_path).read_text())


def save_card(model_path: Path, card: dict[str, Any]) -> None:
    card_json_path(model_path).write_text(json.dumps(card, indent=2) + "\n")
    card_markdown_path(model_path).write_text(render_markdown(card))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def render_markdown(card: dict[str, Any]) -> str:
    """A short human-readable card from the JSON card."""
    t = card.get("training", {})
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        card.get("description", ""),
        "",
        f"- File: `{card['file']}` (sha256 `{card['sha256']}`)",
        *([f"- Replaces: {card['name']} {card['replaces']['version']} (sha256 `{card['replaces']['sha256']}`)"]
          if card.get("replaces") else []),
        f"- Architecture: {card['architecture']}",
        f"- Input: {card['input']['description']}",
        f"- Output: {card['output']['description']}",
        f"- Default threshold: {card['default_threshold']} ({card.get('threshold_guidance', '')})",
        f"- Intended use: {card.get('intended_use', '')}",
        "",
        "## Training",
        "",
        f"- Data: COVID-QU-Ex infection subset, Train split: {t.get('train_counts')} available; all COVID-19 "
        "images every epoch plus Normal images drawn afresh each epoch. "
        "Non-COVID is never used (its empty masks are unannotated, not healthy lungs).",
    ]
    phases = t["phases"]
    for n, phase in enumerate(phases, 1):
        prefix = f"Phase {n} of {len(phases)}: " if len(phases) > 1 else "Recipe: "
        lines += [f"- {prefix}{phase['recipe']}; {phase['images_per_epoch']} images per epoch; "
                  f"weights from epoch {phase['weights_from_epoch']} of {phase['epochs']}",
                  f"  - Command: `{phase['command']}`"]
    lines.append("")
    attempts = card.get("attempts", [])
    if attempts:
        lines += ["## What was tried", ""] + [f"- {a}" for a in attempts] + [""]
    ev = card.get("evaluation")
    if ev:
        lines += [f"## {ev['split']} figures (from `{ev['command']}`)", "",
                  "COVID-19, pixel counts pooled over the split:", "",
                  "| threshold | precision | recall | Dice (F1) | IoU | mean per-image Dice |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for th, m in ev["covid"].items():
            lines.append(f"| {th} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['dice'])} | {_f(m['iou'])} | "
                         f"{_f(m['mean_image_dice'])} |")
        lines += ["", "PPAR (share of image pixels predicted as infection) per image:", "",
                  "| class | threshold | mean | median | p95 | images with any positive |", "|---|---:|---:|---:|---:|---:|"]
        for cls, per_th in ev["ppar"].items():
            for th, s in per_th.items():
                lines.append(f"| {cls} | {th} | {_pct(s['mean'])} | {_pct(s['median'])} | {_pct(s['p95'])} | "
                             f"{_pct(s['any_positive_share'])} |")
        lines += ["", "Lung Dice (lung head, threshold 0.5): " +
                  ", ".join(f"{c} {_f(v)}" for c, v in ev.get("lung_dice", {}).items()), ""]
    lim = card.get("limitations", [])
    if lim:
        lines += ["## Limitations", ""] + [f"- {x}" for x in lim] + [""]
    lines += ["## Data citation", ""] + [f"- {c}" for c in card.get("citations", [])] + [""]
    return "\n".join(lines)
