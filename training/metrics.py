"""Pixel metrics: confusion counts, precision, recall, Dice, IoU and PPAR summaries.

Numpy only, so the same code scores PyTorch validation and the exported ONNX model.
Conventions for empty masks (no ground truth and no prediction): Dice = IoU = 1,
precision = recall = 1 (nothing to find, nothing wrongly found).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Confusion:
    """Pixel confusion counts, accumulated with ``+``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, pred: np.ndarray, target: np.ndarray) -> "Confusion":
        pred = np.asarray(pred).astype(bool)
        target = np.asarray(target).astype(bool)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
        tp = int(np.count_nonzero(pred & target))
        fp = int(np.count_nonzero(pred & ~target))
        fn = int(np.count_nonzero(~pred & target))
        return cls(tp, fp, fn, int(pred.size) - tp - fp - fn)

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def summary(self) -> dict[str, float]:
        """Counts plus precision, recall, Dice (= F1) and IoU."""
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "dice": self.dice,
            "f1": self.dice,
            "iou": self.iou,
        }


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of one pair of binary masks (1.0 when both are empty)."""
    return Confusion.of(pred, target).dice


def ppar_summary(ppars: list[float] | np.ndarray) -> dict[str, float]:
    """Distribution of per-image predicted positive area ratios: mean, median, p95, max and
    the share of images with any predicted pixel."""
    values = np.asarray(ppars, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p95": float("nan"),
                "max": float("nan"), "any_positive_share": float("nan")}
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
        "any_positive_share": float(np.mean(values > 0)),
    }
