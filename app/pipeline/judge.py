"""Judge: is this a frontal chest radiograph the model can read? (after the model run, before any result)

A segmentation is a clinical statement, so it may exist only for an image the model has grounds to judge.
Four things are measured on every image, from what the model run already gives:

- the picture's **contrast**: the 8-bit levels between its 1st and 99th percentiles as the network sees
  it (after the DICOM LUTs, the window and MONOCHROME1); a blank or constant picture has none;
- the **lungs** the model's own lung head finds: the largest lung region in each half of the image (a
  frontal chest has one on each side), as a share of the image, and how confident the head is inside
  the lung field (its mean probability there). The limit bounds both sides together: a lung the disease
  has made wholly opaque is not found, and that chest must still be read;
- the **feature distance**: how far the image lies from the Train images in the encoder's feature space
  (the graph's ``feature_distance`` output: the Mahalanobis distance of the pooled deepest features);
- the **frontal score**: how much the encoder's features, kept by region (a 4x4 grid), look like an upright,
  whole frontal chest radiograph rather than one turned, cropped or inverted (the graph's ``frontal_score``
  output: a linear probe's logit, fitted on Train images against such transforms of Train images).

Each has a limit, calibrated on Train and set on Val with a margin (the model card's ``input_judgement``;
``python -m training.judge_limits``). An image that misses one is refused with a code of its own and a
detail that says what was measured against which limit: ``no_contrast``, ``not_a_chest_radiograph``, or
``appears_inverted`` when the image's negative would have passed (a PhotometricInterpretation or a PNG
export that inverted the picture), which the engine checks with a second model run on refused images only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from app.pipeline.errors import PipelineError, Problem
from app.pipeline.postprocess import LUNG_THRESHOLD

NO_CONTRAST = "no_contrast"
NOT_A_CHEST = "not_a_chest_radiograph"
APPEARS_INVERTED = "appears_inverted"
#: The judgement's refusal codes (422): the node and the bridge skip these, the batch job records them.
JUDGEMENT_CODES = (NO_CONTRAST, NOT_A_CHEST, APPEARS_INVERTED)
EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class JudgeLimits:
    """What an image must reach to be judged. The defaults serve a model whose card has no limits of its
    own (older models); each shipped card carries limits set on its own Val figures."""

    min_contrast: float = 24.0
    min_lung_share: float = 0.01
    min_lung_confidence: float = 0.80
    max_feature_distance: float | None = None
    min_frontal_score: float | None = None

    @classmethod
    def from_card(cls, values: dict[str, Any] | None) -> JudgeLimits:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    """The figures of one image's judgement, and its refusal when it missed a limit."""

    contrast: float
    lung_share_left: float  # the largest lung region in the image's left half, share of the image
    lung_share_right: float
    lung_confidence: float  # the lung head's mean probability inside the lung field
    feature_distance: float | None
    frontal_score: float | None
    refusal: PipelineError | None = None

    def figures(self) -> dict[str, float]:
        """What an accepted image's JSON reports (rounded: margins, not noise); a score the graph does not
        give is left out."""
        scores = {"feature_distance": self.feature_distance, "frontal_score": self.frontal_score}
        return {"contrast": round(self.contrast, 1), "lung_share_left": round(self.lung_share_left, 4),
                "lung_share_right": round(self.lung_share_right, 4),
                "lung_confidence": round(self.lung_confidence, 4),
                **{k: round(v, 2) for k, v in scores.items() if v is not None}}

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def contrast_of(plane: np.ndarray) -> float:
    """8-bit levels between the 1st and 99th percentiles of a network input plane (values in [-1, 1])."""
    lo, hi = np.percentile(plane, (1, 99))
    return float((hi - lo) * 127.5)


def lung_sides(lung_probability: np.ndarray) -> tuple[float, float, float]:
    """The largest lung region whose centre lies in each half of the image, as shares of the image, and
    the head's mean probability inside the lung field (0 without one)."""
    mask = lung_probability >= LUNG_THRESHOLD
    if not mask.any():
        return 0.0, 0.0, 0.0
    regions, count = ndimage.label(mask, structure=EIGHT_NEIGHBOURS)
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(mask, regions, index)
    centres = np.asarray(ndimage.center_of_mass(mask, regions, index))[:, 1]
    half = mask.shape[1] / 2
    left = max((s for s, c in zip(sizes, centres) if c < half), default=0.0)
    right = max((s for s, c in zip(sizes, centres) if c >= half), default=0.0)
    return float(left / mask.size), float(right / mask.size), float(lung_probability[mask].mean())


def measure(plane: np.ndarray, lung_probability: np.ndarray, feature_distance: float | None = None,
            frontal_score: float | None = None) -> Judgement:
    """The judgement's figures of one image: its network input plane, the lung head's probabilities and the
    graph's scores (None for a graph without them)."""
    left, right, confidence = lung_sides(lung_probability)
    return Judgement(contrast_of(plane), left, right, confidence, feature_distance, frontal_score)


def unmet(judgement: Judgement, limits: JudgeLimits) -> PipelineError | None:
    """The refusal of the first limit ``judgement`` misses, saying what was measured against what."""
    j = judgement
    if j.contrast < limits.min_contrast:
        return PipelineError(Problem.INVALID, NO_CONTRAST, (
            f"the picture has no contrast to read: {j.contrast:.1f} grey levels between its 1st and 99th "
            f"percentiles (after the DICOM LUTs and window), under the limit of {limits.min_contrast:g}"))
    if limits.max_feature_distance is not None and j.feature_distance is not None \
            and j.feature_distance > limits.max_feature_distance:
        return not_a_chest(f"the image lies far from the chest radiographs the model was trained on: feature "
                           f"distance {j.feature_distance:.1f}, over the limit of {limits.max_feature_distance:g}")
    if limits.min_frontal_score is not None and j.frontal_score is not None \
            and j.frontal_score < limits.min_frontal_score:
        return not_a_chest(f"the image does not look like an upright, whole frontal chest radiograph (turned, "
                           f"cropped or another view?): frontal score {j.frontal_score:.1f}, under the limit of "
                           f"{limits.min_frontal_score:g}")
    lungs = j.lung_share_left + j.lung_share_right
    if lungs < limits.min_lung_share:
        return not_a_chest(f"no lungs found: the lung field is {100 * lungs:.1f} % of the image, under the limit "
                           f"of {100 * limits.min_lung_share:g} %")
    if j.lung_confidence < limits.min_lung_confidence:
        return not_a_chest(f"the lung fields found are uncertain: mean lung probability {j.lung_confidence:.3f}, "
                           f"under the limit of {limits.min_lung_confidence:g}")
    return None


def not_a_chest(why: str) -> PipelineError:
    return PipelineError(Problem.INVALID, NOT_A_CHEST,
                         f"not a frontal chest radiograph this model can read: {why}")


def appears_inverted(refusal: PipelineError, is_dicom: bool) -> PipelineError:
    """The refusal of an image whose negative passes the judgement: pointed at what inverts pictures."""
    where = ("check PhotometricInterpretation (MONOCHROME1 shows low values white, MONOCHROME2 black) and "
             "PresentationLUTShape against the pixel data" if is_dicom else
             "the PNG or JPEG holds a negative: export it with bones and the mediastinum light, air dark")
    return PipelineError(Problem.INVALID, APPEARS_INVERTED,
                         f"the picture appears inverted (a negative): as it is, {refusal.message.split(': ', 1)[-1]}; "
                         f"its negative would be read as a chest radiograph: {where}")


def judged(judgement: Judgement, limits: JudgeLimits) -> Judgement:
    """``judgement`` with its refusal (None when it meets every limit)."""
    return replace(judgement, refusal=unmet(judgement, limits))
