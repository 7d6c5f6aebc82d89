"""Postprocess: the infection mask under the threshold and the region peak rule."""

from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.postprocess import infection_mask, postprocess


def two_regions() -> np.ndarray:
    """A faint region (peak 0.6) and a confident one (peak 0.9) on an empty 32x32 map."""
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[2:8, 2:8] = 0.55
    prob[4, 4] = 0.6
    prob[20:28, 20:28] = 0.55
    prob[24, 24] = 0.9
    return prob


def test_a_region_is_kept_only_when_its_peak_reaches_the_rule():
    prob = two_regions()
    mask = infection_mask(prob, 0.5, 0.7)
    assert not mask[2:8, 2:8].any()  # the whole faint region goes, not only its pixels under 0.7
    assert mask[20:28, 20:28].all() and mask.sum() == 64


def test_without_a_rule_above_the_threshold_the_mask_is_the_threshold():
    prob = two_regions()
    for peak in (0.0, 0.5, 0.3):
        assert np.array_equal(infection_mask(prob, 0.5, peak), prob >= 0.5)


def test_diagonal_neighbours_are_one_region():
    prob = np.zeros((8, 8), dtype=np.float32)
    prob[2, 2], prob[3, 3] = 0.6, 0.95  # touch at a corner only
    assert infection_mask(prob, 0.5, 0.9).sum() == 2


def test_postprocess_applies_the_rule_at_the_image_size_and_records_it():
    probs = np.stack([two_regions(), np.ones((32, 32), dtype=np.float32)])
    seg = postprocess(probs, 64, 64, threshold=0.5, region_peak_threshold=0.7)
    assert seg.region_peak_threshold == 0.7 and seg.infection_mask.shape == (64, 64)
    assert not seg.infection_mask[:20, :20].any() and seg.infection_mask[42:54, 42:54].all()
    plain = postprocess(probs, 64, 64, threshold=0.5)
    assert plain.infection_pixels > seg.infection_pixels


def by_definition(prob: np.ndarray, threshold: float, peak: float) -> np.ndarray:
    """The rule written out with no shortcut: label every region, keep those holding a pixel at the peak."""
    from scipy import ndimage

    regions, count = ndimage.label(prob >= threshold, structure=np.ones((3, 3), dtype=bool))
    keep = np.zeros(count + 1, dtype=bool)
    keep[regions[prob >= peak]] = True
    return keep[regions]


@pytest.mark.parametrize("peak", [0.7, 0.9, 0.99])
def test_the_rule_equals_its_definition_when_all_some_or_no_regions_peak(peak):
    rng = np.random.default_rng(22)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(96, 96)), axis=0), axis=1)  # blobs, not specks
    prob = ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)
    for threshold in (0.3, 0.5, 0.6):
        expected = by_definition(prob, threshold, peak)
        assert infection_mask(prob, threshold, peak).dtype == bool
        assert np.array_equal(infection_mask(prob, threshold, peak), expected)
    assert not infection_mask(two_regions(), 0.5, 0.95).any()  # no region reaches it
    assert np.array_equal(infection_mask(two_regions(), 0.5, 0.58), two_regions() >= 0.5)  # every region does
