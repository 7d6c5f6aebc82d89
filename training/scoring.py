"""Scores of predicted probabilities against ground truth: the one scoring code of training's
per-epoch validation and of ``training.evaluate``. Metrics come from confusion counts."""

from __future__ import annotations

import numpy as np

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
