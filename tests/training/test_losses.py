"""The training loss: Dice + BCE on both heads, with the Normal-image BCE weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import DiceBCELoss


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 16, 16, generator=g)
    target = torch.zeros(2, 2, 16, 16)
    target[0, 0, 4:10, 4:10] = 1  # image 0: COVID-19 with an infection patch
    target[:, 1, 2:14, 2:14] = 1  # both images have lungs; image 1 has no infection (Normal)
    return logits, target


def test_negative_weight_scales_only_the_infection_bce_of_images_without_infection():
    logits, target = _batch()
    plain = DiceBCELoss(negative_weight=1.0)(logits, target)
    weighted = DiceBCELoss(negative_weight=4.0)(logits, target)
    normal_bce = F.binary_cross_entropy_with_logits(logits[1, 0], target[1, 0])
    # the batch mean over 2 images gains (4 - 1) * the Normal image's BCE / 2
    assert float(weighted - plain) == pytest.approx(float(3.0 * normal_bce / 2), rel=1e-5)


def test_negative_weight_has_no_effect_when_every_image_has_infection():
    logits, target = _batch()
    target[1, 0, 0:3, 0:3] = 1
    assert float(DiceBCELoss(negative_weight=4.0)(logits, target)) == pytest.approx(
        float(DiceBCELoss(negative_weight=1.0)(logits, target)), rel=1e-6)


def test_plain_loss_is_dice_plus_bce_per_head():
    logits, target = _batch()
    loss = DiceBCELoss(lung_weight=0.5)(logits, target)
    bce = [F.binary_cross_entropy_with_logits(logits[:, c], target[:, c]) for c in (0, 1)]

    def soft_dice_loss(c: int) -> torch.Tensor:
        p = torch.sigmoid(logits[:, c])
        return 1 - 2 * (p * target[:, c]).sum() / (p.sum() + target[:, c].sum())

    expected = bce[0] + soft_dice_loss(0) + 0.5 * (bce[1] + soft_dice_loss(1))
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
