"""Dice + BCE on both heads, as in the source recipe."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """``Dice + BCE`` per channel (infection, lung), summed.

    Dice is computed over the whole batch per channel (smp's multilabel mode), so a
    batch of Normal images with empty infection masks still has a defined loss.
    """

    def __init__(self, lung_weight: float = 0.5):
        super().__init__()
        self.dice = DiceLoss(mode="multilabel", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        self.lung_weight = lung_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weights = torch.tensor([1.0, self.lung_weight], device=logits.device)
        bce = (self.bce(logits, target).mean(dim=(0, 2, 3)) * weights).sum()
        dice_inf = self.dice(logits[:, :1], target[:, :1])
        dice_lung = self.dice(logits[:, 1:], target[:, 1:])
        return bce + dice_inf + self.lung_weight * dice_lung
