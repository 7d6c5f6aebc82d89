from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.postprocess import ppar
from training.metrics import Confusion, dice_score, ppar_summary


def test_confusion_against_hand_counts():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    target = np.array([[1, 0, 0], [1, 1, 0]])
    c = Confusion.of(pred, target)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.dice == pytest.approx(4 / 6)
    assert c.iou == pytest.approx(2 / 4)


def test_counts_pool_over_images():
    a = Confusion.of(np.array([1, 0]), np.array([1, 1]))
    b = Confusion.of(np.array([1, 1]), np.array([0, 0]))
    pooled = a + b
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.tn) == (1, 2, 1, 0)
    assert pooled.dice == pytest.approx(2 / 5)


def test_empty_masks():
    empty = np.zeros((4, 4))
    assert dice_score(empty, empty) == 1.0
    assert Confusion.of(empty, empty).iou == 1.0
    one = empty.copy()
    one[0, 0] = 1
    assert dice_score(one, empty) == 0.0
    assert Confusion.of(empty, one).recall == 0.0
    assert Confusion.of(empty, one).precision == 1.0  # nothing predicted, nothing wrongly predicted


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        Confusion.of(np.zeros((2, 2)), np.zeros((3, 3)))


def test_ppar_and_its_summary():
    m = np.zeros((10, 10), bool)
    m[:2, :5] = True
    assert ppar(m) == pytest.approx(0.1)
    s = ppar_summary([0.0, 0.0, 0.0, 0.2])
    assert s["median"] == 0.0 and s["mean"] == pytest.approx(0.05)
    assert s["any_positive_share"] == 0.25 and s["max"] == pytest.approx(0.2)
    assert s["p95"] == pytest.approx(np.percentile([0, 0, 0, 0.2], 95))
