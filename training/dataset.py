"""PyTorch dataset over in-memory samples, with optional augmentation, through the shared preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from app.pipeline.preprocess import INPUT_SIZE, preprocess_image, resize_mask
from training.data import LoadedSamples


def build_augmentation() -> v2.Compose:
    """Mild geometric and intensity jitter; masks follow the geometry with nearest-neighbour.

    Chosen for training from scratch on ~2.4k images: flips and small affine changes that
    keep anatomy plausible, and brightness/contrast changes that mimic exposure differences.
    """
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=0.7),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
        ]
    )


class SegmentationDataset(Dataset):
    """Yields ``(x, y)``: x float32 (3, S, S) from :func:`preprocess_image`, y float32 (2, S, S)
    with channels (infection, lung)."""

    def __init__(self, data: LoadedSamples, indices: np.ndarray | None = None, augment: bool = False,
                 size: int = INPUT_SIZE):
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=int)
        self.transform = build_augmentation() if augment else None
        self.size = size

    def set_indices(self, indices: np.ndarray) -> None:
        self.indices = np.asarray(indices, dtype=int)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.indices[i]
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
