"""The render step: masks, probabilities and the overlay as images."""

from __future__ import annotations

import numpy as np

from app.pipeline.render import (INFECTION_ALPHA, LUNG_OUTLINE_RGB, mask_image, outline, overlay_rgb,
                                 probability_image)


def square(size: int, lo: int, hi: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_outline_is_a_ring_of_the_given_width_inside_the_mask():
    ring = outline(square(40, 10, 30), width=2)
    expected = square(40, 10, 30) & ~square(40, 12, 28)
    np.testing.assert_array_equal(ring, expected)


def test_outline_of_a_mask_touching_the_border_does_not_draw_the_image_edge():
    ring = outline(square(20, 0, 20), width=1)  # the whole image: nothing inside borders anything
    assert not ring.any()


def test_overlay_tints_infection_and_outlines_the_lung():
    gray = np.full((256, 256), 100, np.uint8)
    infection, lung = square(256, 100, 120), square(256, 50, 200)
    rgb = overlay_rgb(gray, infection, lung)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[110, 110]) == tuple(round((1 - INFECTION_ALPHA) * 100 + INFECTION_ALPHA * c) for c in (255, 0, 0))
    assert tuple(rgb[50, 120]) == LUNG_OUTLINE_RGB and tuple(rgb[10, 10]) == (100, 100, 100)


def test_lung_outline_grows_with_the_image_so_it_stays_visible():
    side = 3000
    rgb = overlay_rgb(np.zeros((side, side), np.uint8), np.zeros((side, side), bool), square(side, 500, 2500))
    drawn = np.all(rgb == LUNG_OUTLINE_RGB, axis=2)
    assert drawn[500:512, 1500].all() and not drawn[512, 1500]  # round(3000 / 256) = 12 px wide


def test_mask_and_probability_images_are_8_bit():
    np.testing.assert_array_equal(mask_image(np.array([[0, 1], [True, False]])), [[0, 255], [255, 0]])
    np.testing.assert_array_equal(probability_image(np.array([[0.0, 0.5, 1.0, 1.2]])), [[0, 128, 255, 255]])
