"""PyTorch dataset over in-memory samples, with optional augmentation, through the shared preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from app.pipeline.preprocess import INPUT_SIZE, preprocess_image, resize_mask
from training.data import LoadedSamples


AUGMENTATIONS = ("mild", "strong")


class RandomGamma(v2.Transform):
    """Gamma in ``[lo, hi]`` on the image only (masks pass through): the tone curves of different detectors."""

    def __init__(self, lo: float = 0.7, hi: float = 1.5):
        super().__init__()
        self.lo, self.hi = lo, hi

    def make_params(self, flat_inputs: list) -> dict:
        return {"gamma": float(torch.empty(1).uniform_(self.lo, self.hi))}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return v2.functional.adjust_gamma(inpt, params["gamma"])


def build_augmentation(strength: str = "mild") -> v2.Compose:
    """Geometric and intensity jitter; masks follow the geometry with nearest-neighbour.

    ``mild`` (the 1.x models): flips, small affine changes that keep anatomy plausible, and
    brightness/contrast changes that mimic exposure differences. ``strong`` adds detector tone
    curves (gamma), a global contrast stretch and local contrast equalisation (CLAHE-like).
    """
    steps = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=0.7),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
    ]
    if strength == "strong":
        steps += [v2.RandomApply([RandomGamma()], p=0.5), v2.RandomAutocontrast(p=0.2), v2.RandomEqualize(p=0.1)]
    elif strength != "mild":
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {strength!r}")
    return v2.Compose(steps)


class SegmentationDataset(Dataset):
    """Yields ``(x, y)``: x float32 (3, S, S) from :func:`preprocess_image`, y float32 (2, S, S)
    with channels (infection, lung)."""

    def __init__(self, data: LoadedSamples, augment: str | None = None, size: int = INPUT_SIZE):
        self.data = data
        self.transform = build_augmentation(augment) if augment else None
        self.size = size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.data.images[k]
        masks = np.stack([self.data.infection[k], self.data.lung[k]])
        if self.transform is not None:
            img_t, mask_t = self.transform(
                tv_tensors.Image(torch.from_numpy(image)[None]), tv_tensors.Mask(torch.from_numpy(masks))
            )
            image = img_t[0].numpy()
            masks = mask_t.numpy()
        x = preprocess_image(np.ascontiguousarray(image), self.size)
        y = np.stack([resize_mask(m, self.size) for m in masks]).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(y)
