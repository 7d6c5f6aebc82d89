"""The judge step's measures and limits, on pictures and probability maps made to hold one thing each."""

from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.judge import (APPEARS_INVERTED, NO_CONTRAST, NOT_A_CHEST, JudgeLimits, appears_inverted,
                                contrast_of, judged, lung_sides, measure)
from app.pipeline.preprocess import scaled_plane

LIMITS = JudgeLimits(min_contrast=24, min_lung_share=0.01, min_lung_confidence=0.8, max_feature_distance=30,
                     min_frontal_score=0.0)


def two_lungs(size: int = 256, probability: float = 0.98) -> np.ndarray:
    lungs = np.zeros((size, size), dtype=np.float32)
    lungs[60:200, 30:110] = probability
    lungs[60:200, 146:226] = probability
    return lungs


def chest_plane() -> np.ndarray:
    return scaled_plane(np.tile(np.linspace(0, 255, 256), (256, 1)).astype(np.uint8))


def test_contrast_is_the_spread_of_the_middle_98_percent_in_grey_levels():
    assert contrast_of(scaled_plane(np.full((256, 256), 200, np.uint8))) == 0
    ramp = chest_plane()
    assert contrast_of(ramp) == pytest.approx(0.98 * 255, abs=2)
    specks = np.full((256, 256), 100, np.uint8)
    specks[:5, :5] = 255  # under 1 % of the pixels: no contrast for reading
    assert contrast_of(scaled_plane(specks)) == 0


def test_lung_sides_take_the_largest_region_on_each_side_and_the_mean_probability_inside():
    lungs = two_lungs()
    lungs[10:14, 10:14] = 0.9  # a speck on the left, smaller than the left lung
    left, right, confidence = lung_sides(lungs)
    assert left == pytest.approx(140 * 80 / 256 ** 2) and right == pytest.approx(140 * 80 / 256 ** 2)
    assert confidence == pytest.approx((2 * 140 * 80 * 0.98 + 16 * 0.9) / (2 * 140 * 80 + 16), rel=1e-4)
    one = two_lungs()
    one[:, 128:] = 0
    assert lung_sides(one)[1] == 0.0
    assert lung_sides(np.zeros((256, 256), np.float32)) == (0.0, 0.0, 0.0)


def test_an_image_meeting_every_limit_is_accepted_with_its_figures():
    judgement = judged(measure(chest_plane(), two_lungs(), 12.5, 3.0), LIMITS)
    assert judgement.accepted
    assert judgement.figures() == {"contrast": pytest.approx(0.98 * 255, abs=2), "lung_share_left": 0.1709,
                                   "lung_share_right": 0.1709, "lung_confidence": 0.98, "feature_distance": 12.5,
                                   "frontal_score": 3.0}


@pytest.mark.parametrize("plane, lungs, distance, frontal, code, words", [
    (scaled_plane(np.full((256, 256), 255, np.uint8)), two_lungs(), 10, 3, NO_CONTRAST, "0.0 grey levels"),
    (chest_plane(), two_lungs(), 31.0, 3, NOT_A_CHEST, "feature distance 31.0, over the limit of 30"),
    (chest_plane(), two_lungs(), 10, -1.5, NOT_A_CHEST, "frontal score -1.5, under the limit of 0"),
    (chest_plane(), two_lungs() * (np.arange(256) < 20), 10, 3, NOT_A_CHEST, "lung field is 0.0 % of the image"),
    (chest_plane(), two_lungs(probability=0.6), 10, 3, NOT_A_CHEST, "mean lung probability 0.600, under the limit of 0.8"),
])
def test_each_limit_refuses_with_its_code_and_says_what_was_measured_against_what(plane, lungs, distance, frontal,
                                                                               code, words):
    refusal = judged(measure(plane, lungs.astype(np.float32), distance, frontal), LIMITS).refusal
    assert refusal is not None and refusal.code == code
    assert words in refusal.message


def test_one_lung_found_is_enough_when_the_other_is_opaque():
    one = two_lungs()
    one[:, 128:] = 0  # a white-out lung: the head finds none there
    assert judged(measure(chest_plane(), one, 12, 3), LIMITS).accepted


def test_a_graph_without_scores_is_judged_on_contrast_and_lungs_alone():
    judgement = judged(measure(chest_plane(), two_lungs()), LIMITS)
    assert judgement.accepted and "feature_distance" not in judgement.figures()


def test_limits_come_from_the_card_and_unknown_keys_are_ignored():
    limits = JudgeLimits.from_card({"min_contrast": 30, "max_feature_distance": 25.5, "future_limit": 1})
    assert limits.min_contrast == 30 and limits.max_feature_distance == 25.5
    assert limits.min_lung_share == JudgeLimits().min_lung_share
    assert JudgeLimits.from_card(None) == JudgeLimits()


def test_an_inverted_refusal_points_at_photometric_interpretation_for_dicom_and_at_the_export_for_png():
    refusal = judged(measure(chest_plane(), two_lungs(), 40, 3), LIMITS).refusal
    dicom, png = appears_inverted(refusal, is_dicom=True), appears_inverted(refusal, is_dicom=False)
    assert dicom.code == png.code == APPEARS_INVERTED
    assert "PhotometricInterpretation" in dicom.message and "feature distance 40.0" in dicom.message
    assert "PhotometricInterpretation" not in png.message and "negative" in png.message
