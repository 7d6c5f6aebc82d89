"""The one scoring code of validation and evaluation, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from training.scoring import infection_scores, lung_dice, ppar_scores


def test_infection_scores_pool_counts_and_average_per_image_dice():
    gt = np.zeros((2, 4, 4), np.uint8)
    gt[0, :2] = 1  # 8 pixels
    gt[1, 0, 0] = 1  # 1 pixel
    prob = np.zeros((2, 4, 4), np.float32)
    prob[0, :1] = 0.9  # 4 of the 8
    prob[1, 0, 0] = 0.4  # found only at thresholds <= 0.4
    high = infection_scores(prob, gt, 0.5)
    assert (high["tp"], high["fp"], high["fn"]) == (4, 0, 5)
    assert high["dice"] == pytest.approx(8 / 13)
    assert high["mean_image_dice"] == pytest.approx(np.mean([8 / 12, 0.0]))
    low = infection_scores(prob, gt, 0.3)
    assert (low["tp"], low["fn"]) == (5, 4) and low["mean_image_dice"] == pytest.approx(np.mean([8 / 12, 1.0]))


def test_ppar_scores_and_lung_dice():
    prob = np.zeros((4, 10, 10), np.float32)
    prob[3, :2, :5] = 0.8  # one image with 10 % predicted
    s = ppar_scores(prob, 0.5)
    assert s["median"] == 0 and s["any_positive_share"] == 0.25 and s["max"] == pytest.approx(0.1)
    lung = np.zeros((1, 4, 4), np.float32)
    lung[0, :, :2] = 0.7
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, :, 1:3] = 1
    assert lung_dice(lung, gt) == pytest.approx(2 * 4 / (8 + 8))
