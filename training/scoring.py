"""Scores of predicted probabilities against ground truth: the one scoring code of training's
per-epoch validation and of ``training.evaluate``. Metrics come from confusion counts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from app.pipeline.postprocess import LUNG_THRESHOLD, infection_mask, ppar
from training.metrics import Confusion, dice_score, ppar_summary


def infection_scores(prob: np.ndarray, gt: np.ndarray, threshold: float,
                     region_peak_threshold: float = 0.0) -> dict[str, float]:
    """Images with annotated infection (COVID-19): confusion counts pooled over the images, their
    precision, recall, Dice and IoU, and the mean per-image Dice."""
    pred = [infection_mask(p, threshold, region_peak_threshold) for p in prob]
    conf = sum((Confusion.of(p, g) for p, g in zip(pred, gt)), Confusion())
    return {**conf.summary(), "mean_image_dice": float(np.mean([dice_score(p, g) for p, g in zip(pred, gt)]))}


def ppar_scores(prob: np.ndarray, threshold: float, region_peak_threshold: float = 0.0) -> dict[str, float]:
    """Per-image predicted positive area ratios, summarised (mean, median, p95, share with any)."""
    return ppar_summary([ppar(infection_mask(p, threshold, region_peak_threshold)) for p in prob])


def lung_dice(prob: np.ndarray, gt: np.ndarray) -> float:
    """Dice of the lung head at its fixed threshold, pooled over the images."""
    return sum((Confusion.of(p >= LUNG_THRESHOLD, g) for p, g in zip(prob, gt)), Confusion()).dice


#: Groups of COVID-19 images by the share of the image annotated as infection.
EXTENT_BINS = (0.0, 0.02, 0.05, 0.10, 0.20, 0.30, 1.0)


def errors_by_extent(prob: np.ndarray, gt: np.ndarray, threshold: float, region_peak_threshold: float = 0.0,
                     bins: tuple[float, ...] = EXTENT_BINS) -> list[dict[str, object]]:
    """Where the wrong pixels are: images grouped by annotated extent, each group's pooled Dice and
    its share of all false positive and false negative pixels."""
    confusions = [Confusion.of(infection_mask(p, threshold, region_peak_threshold), g) for p, g in zip(prob, gt)]
    extents = np.array([np.count_nonzero(g) / g.size for g in gt])
    wrong = sum(c.fp + c.fn for c in confusions) or 1
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (extents >= lo) & ((extents < hi) | (hi == bins[-1]))
        pooled = sum((c for c, i in zip(confusions, inside) if i), Confusion())
        rows.append({"extent": [lo, hi], "images": int(inside.sum()),
                     "dice": pooled.dice if inside.any() else None, "error_share": (pooled.fp + pooled.fn) / wrong})
    return rows


def near_boundary_error_share(prob: np.ndarray, gt: np.ndarray, threshold: float,
                              region_peak_threshold: float = 0.0, width: int = 4) -> float:
    """Share of the wrong pixels within ``width`` px of an annotated outline. Low: the errors are
    regions missed or added, not outlines drawn a little differently."""
    wrong = near = 0
    for p, g in zip(prob, gt):
        g = np.asarray(g) > 0
        errors = infection_mask(p, threshold, region_peak_threshold) ^ g
        band = ndimage.binary_dilation(g, iterations=width) & ~ndimage.binary_erosion(g, iterations=width)
        wrong, near = wrong + np.count_nonzero(errors), near + np.count_nonzero(errors & band)
    return near / wrong if wrong else 0.0
