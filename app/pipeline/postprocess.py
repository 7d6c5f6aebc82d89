"""Postprocess: network probabilities -> masks at the input's resolution and measurements.

The network runs at 256x256; probabilities are resized back to the original size
*before* thresholding, so masks follow the image rather than a blown-up grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

if TYPE_CHECKING:
    from app.pipeline.judge import Judgement

#: Lung field decision threshold (the lung head is not user-tunable).
LUNG_THRESHOLD = 0.5
#: Connectivity of infection regions: 8 neighbours.
EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)

#: Severity grade bins on the share of the lung field predicted infected, in the spirit of
#: Tahir et al. 2021 (COVID-QU-Ex), who grade severity from the infected lung percentage.
#: Each entry: (upper bound exclusive, grade). "none" only when nothing is predicted.
SEVERITY_BINS: tuple[tuple[float, str], ...] = (
    (0.25, "mild"),
    (0.50, "moderate"),
    (0.75, "severe"),
    (float("inf"), "critical"),
)


def ppar(mask: np.ndarray) -> float:
    """Predicted positive area ratio: the fraction of pixels predicted positive."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask)) / float(mask.size) if mask.size else 0.0


def infection_mask(prob: np.ndarray, threshold: float, region_peak_threshold: float = 0.0) -> np.ndarray:
    """Pixels at or above ``threshold``, keeping only the connected regions (8-neighbour) whose highest
    probability reaches ``region_peak_threshold`` (hysteresis thresholding). The model's false
    positives on Normal lungs are faint blobs, not specks, so a size rule does not remove them and a
    peak rule does (model card: attempts)."""
    mask = prob >= threshold
    if region_peak_threshold <= threshold or not mask.any():
        return mask  # every region already peaks at or above the threshold
    peaks = prob >= region_peak_threshold
    if not peaks.any():
        return np.zeros_like(mask)  # no region reaches the peak
    regions, count = ndimage.label(mask, structure=EIGHT_NEIGHBOURS)
    keep = np.zeros(count + 1, dtype=bool)
    keep[regions[peaks]] = True  # the regions holding a pixel at the peak
    if keep[1:].all():
        return mask  # all of them: the mask as it is, without a look-up per pixel
    return keep[regions]


def resize_probability(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float probability map (h, w) to (height, width)."""
    if prob.shape == (height, width):
        return prob.astype(np.float32, copy=False)
    img = Image.fromarray(prob.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def severity_ranges() -> list[tuple[str, str]]:
    """Each grade with its range of infected lung share, as text (for documentation and ``GET /model``)."""
    ranges, lower = [("none", "no infection predicted")], 0.0
    for upper, grade in SEVERITY_BINS:
        ranges.append((grade, f"[{lower:.2f}, 1.00]" if upper == float("inf") else f"[{lower:.2f}, {upper:.2f})"))
        lower = upper
    return ranges


def severity_grade(infected_lung_share: float, infection_pixels: int) -> str:
    """Grade from the share of the lung predicted infected (see :data:`SEVERITY_BINS`)."""
    if infection_pixels == 0:
        return "none"
    for upper, grade in SEVERITY_BINS:
        if infected_lung_share < upper:
            return grade
    return SEVERITY_BINS[-1][1]


@dataclass
class Segmentation:
    """Masks and measurements of one image, at its own resolution."""

    network_probabilities: np.ndarray  # float32 (2, h, w) at the network's size
    infection_mask: np.ndarray  # bool (H, W)
    lung_mask: np.ndarray  # bool (H, W)
    threshold: float
    region_peak_threshold: float = 0.0
    judgement: Judgement | None = None  # the judge step's figures (the image was accepted)
    tta: str = "none"  # the test-time augmentation the probabilities came from (results' identities name it)

    def infection_probability(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the infection probability at the image's size, resized when asked
        for (kept at full size it was the largest array a request held: 36 MB at 3000 px)."""
        height, width = self.infection_mask.shape
        return resize_probability(self.network_probabilities[0], width, height)

    @property
    def infection_pixels(self) -> int:
        return int(np.count_nonzero(self.infection_mask))

    @property
    def lung_pixels(self) -> int:
        return int(np.count_nonzero(self.lung_mask))

    @property
    def ppar(self) -> float:
        return ppar(self.infection_mask)

    @property
    def lung_fraction(self) -> float:
        return ppar(self.lung_mask)

    @property
    def infected_lung_share(self) -> float:
        """Share of the lung field predicted infected (infection pixels inside the lung / lung pixels)."""
        lung = self.lung_pixels
        if lung == 0:
            return 0.0
        return float(np.count_nonzero(self.infection_mask & self.lung_mask)) / lung

    @property
    def severity(self) -> str:
        return severity_grade(self.infected_lung_share, self.infection_pixels)


def postprocess(probabilities: np.ndarray, width: int, height: int, threshold: float,
                region_peak_threshold: float = 0.0) -> Segmentation:
    """Turn one network output (2, h, w) into a :class:`Segmentation` of size (height, width).

    A pixel is infection when its probability is ``>= threshold`` and its region's peak reaches
    ``region_peak_threshold`` (see :func:`infection_mask`).
    """
    if probabilities.ndim != 3 or probabilities.shape[0] != 2:
        raise ValueError(f"expected probabilities of shape (2, h, w), got {probabilities.shape}")
    inf = resize_probability(probabilities[0], width, height)
    return Segmentation(
        network_probabilities=probabilities,
        infection_mask=infection_mask(inf, threshold, region_peak_threshold),
        lung_mask=resize_probability(probabilities[1], width, height) >= LUNG_THRESHOLD,
        threshold=threshold,
        region_peak_threshold=region_peak_threshold,
    )
