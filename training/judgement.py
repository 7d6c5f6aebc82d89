"""The Train data of the input judgement's scores (``app.pipeline.judge``), fitted at export.

- The feature distance's mean and covariance: the pooled deepest encoder features of every Train image.
- The frontal score's probe: the grid features (4x4) of every Train image (upright, whole chests) against
  those of a sample of Train images made into what the model cannot read as one: turned 90, 180 and 270
  degrees, upside down, inverted, and cut to a half or a quarter (:func:`made_unreadable`).

Only Train images are used: Val sets the limits (``training.judge_limits``), and the non-chest set of
``tests/nonchest.py`` (made from the fixture images, photographs and other modalities) measures them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.pipeline.preprocess import preprocess_batch
from training.data import CLASSES, index_split, load_samples
from training.model import FeatureDistance, FrontalScore, fit_feature_distance, fit_frontal_score, grid_features

#: One Train image in this many is made unreadable for the frontal score's counter-examples.
UNREADABLE_EVERY = 7


def made_unreadable(gray: np.ndarray) -> list[np.ndarray]:
    """A chest radiograph made into pictures the model cannot judge as one (each as its own array)."""
    h, w = gray.shape
    views = [np.rot90(gray, 1), np.rot90(gray, 2), np.rot90(gray, 3), gray[::-1], 255 - gray,
             gray[h // 2:], gray[:h // 2], gray[:, :w // 2], gray[:, w // 2:], gray[:h // 2, w // 2:]]
    return [np.ascontiguousarray(v) for v in views]


def deepest_features(net: torch.nn.Module, grays: list[np.ndarray], size: int, desc: str,
                     batch_size: int = 16) -> torch.Tensor:
    """The encoder's deepest feature maps of each picture, preprocessed as the service does: (N, C, h, w)."""
    parts = []
    with torch.no_grad():
        for i in tqdm(range(0, len(grays), batch_size), desc=desc, unit="batch"):
            parts.append(net.encoder(torch.from_numpy(preprocess_batch(grays[i:i + batch_size], size)))[-1])
    return torch.cat(parts)


def fit_judgement(net: torch.nn.Module, data_root: Path, size: int) -> tuple[FeatureDistance, FrontalScore]:
    """The feature distance and the frontal score of ``net``, fitted on the Train split (every class)."""
    images = list(load_samples(index_split(data_root, "Train", CLASSES), progress=True).images)
    chests = deepest_features(net, images, size, "Train features")
    unreadable = [v for gray in images[::UNREADABLE_EVERY] for v in made_unreadable(gray)]
    others = deepest_features(net, unreadable, size, "Train images made unreadable")
    return (fit_feature_distance(chests.mean(dim=(2, 3))),
            fit_frontal_score(grid_features(chests), grid_features(others)))
