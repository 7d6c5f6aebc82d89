"""The network: a ResNet-34 U-Net (segmentation-models-pytorch) with two output heads."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

#: Output channels, in order. Channel 0 is infection, channel 1 the lung field.
OUTPUT_CHANNELS = ("infection", "lung")


def build_model(encoder: str = "resnet34", encoder_weights: str | None = None) -> smp.Unet:
    """U-Net on ``encoder`` predicting logits for :data:`OUTPUT_CHANNELS`.

    ``encoder_weights=None`` trains from scratch; ``"imagenet"`` needs internet access.
    """
    return smp.Unet(
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        in_channels=3,
        classes=len(OUTPUT_CHANNELS),
    )


class ProbabilityModel(nn.Module):
    """The exported graph: logits through a sigmoid, so ONNX outputs probabilities (N, 2, H, W)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))
