"""The one scoring code of validation and evaluation, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from training.scoring import errors_by_extent, infection_scores, lung_dice, near_boundary_error_share, ppar_scores


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


def test_errors_by_extent_groups_images_by_annotated_share():
    gt = np.zeros((2, 10, 10), np.uint8)
    gt[0, 0, 0] = 1  # 1 % of the image
    gt[1, :5] = 1  # 50 %
    prob = np.zeros((2, 10, 10), np.float32)
    prob[1, :4] = 0.9  # the large one: 40 found, 10 missed; the small one missed
    rows = errors_by_extent(prob, gt, 0.5, bins=(0.0, 0.02, 1.0))
    assert [r["images"] for r in rows] == [1, 1]
    assert rows[0]["dice"] == 0.0 and rows[1]["dice"] == pytest.approx(80 / 90)
    assert [r["error_share"] for r in rows] == pytest.approx([1 / 11, 10 / 11])


def test_near_boundary_share_tells_outline_errors_from_missed_regions():
    gt = np.zeros((1, 40, 40), np.uint8)
    gt[0, 10:30, 10:30] = 1
    outline_off = np.zeros((1, 40, 40), np.float32)
    outline_off[0, 11:31, 11:31] = 0.9  # the same region, shifted by one pixel
    assert near_boundary_error_share(outline_off, gt, 0.5, width=2) == 1.0
    elsewhere = np.zeros((1, 40, 40), np.float32)
    elsewhere[0, 0:5, 35:40] = 0.9  # the region missed, another one added far away
    # of the 400 missed pixels only the 2 px rim (400 - 16 x 16) is near the outline; the 25 added are not
    assert near_boundary_error_share(elsewhere, gt, 0.5, width=2) == pytest.approx((400 - 256) / 425)
