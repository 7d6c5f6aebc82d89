"""Dice + BCE on both heads, as in the source recipe."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """``Dice + BCE`` per channel (infection, lung), summed.

    Dice is computed over the whole batch per channel (smp's multilabel mode), so a
    batch of Normal images with empty infection masks still has a defined loss.

    ``negative_weight`` scales the infection BCE of images whose infection mask is
    empty (the Normal images). Averaged over a batch, a few false-positive blobs on a
    clean lung are a tiny share of all pixels; weighting those images is the direct way
    to make clean lungs matter (1.0 = the plain recipe).
    """

    def __init__(self, lung_weight: float = 0.5, negative_weight: float = 1.0):
        super().__init__()
        self.dice = DiceLoss(mode="multilabel", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        self.lung_weight = lung_weight
        self.negative_weight = negative_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = self.bce(logits, target).mean(dim=(2, 3))  # (N, 2): per image and channel
        empty = target[:, 0].flatten(1).amax(dim=1) == 0
        image_weight = torch.where(empty, self.negative_weight, 1.0)
        bce_inf = (bce[:, 0] * image_weight).mean()
        bce_lung = bce[:, 1].mean()
        dice_inf = self.dice(logits[:, :1], target[:, :1])
        dice_lung = self.dice(logits[:, 1:], target[:, 1:])
        return bce_inf + dice_inf + self.lung_weight * (bce_lung + dice_lung)
