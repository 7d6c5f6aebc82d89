"""A run's per-epoch history: ``history.json``, ``history.csv`` and the curves plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np


def write_history(history: list[dict[str, Any]], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=2))
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss, Dice and Normal PPAR per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    axes[0].set(title="Dice + BCE loss", xlabel="epoch")
    axes[0].legend()
    axes[1].plot(ep, [h.get("covid_dice", np.nan) for h in history], "o-", label="COVID-19 Dice (global, t=0.5)")
    axes[1].plot(ep, [h.get("covid_mean_image_dice", np.nan) for h in history], "o-", label="COVID-19 mean per-image Dice")
    axes[1].plot(ep, [h.get("lung_dice", np.nan) for h in history], "o-", label="lung Dice")
    axes[1].set(title="Val Dice", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    axes[2].plot(ep, [100 * h.get("normal_ppar_p95", np.nan) for h in history], "o-", label="p95")
    axes[2].plot(ep, [100 * h.get("normal_ppar_median", np.nan) for h in history], "o-", label="median")
    axes[2].axhline(1.0, color="grey", ls="--", label="1% bar")
    axes[2].set(title="Val Normal PPAR (%)", xlabel="epoch")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
