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


class FeatureDistance(nn.Module):
    """How far an image lies from the training images in the encoder's feature space: the Mahalanobis
    distance of its deepest encoder features, averaged over the image (global average pooling), from
    their mean over the Train split, with a shrunk covariance (``fit_feature_distance``). The input
    judgement reads it to refuse what the model was not trained on (a knee, a photograph, noise)."""

    def __init__(self, mean: torch.Tensor, whitening: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("whitening", whitening.float())  # W with W W^T = inverse covariance

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        pooled = deepest.mean(dim=(2, 3))
        return torch.linalg.vector_norm((pooled - self.mean) @ self.whitening, dim=1)


def fit_feature_distance(features: torch.Tensor, shrinkage: float = 0.01) -> FeatureDistance:
    """``FeatureDistance`` of (N, C) training features: covariance shrunk towards its mean variance by
    ``shrinkage`` (C = 512 dimensions from a few thousand images needs it to be invertible and stable)."""
    x = features.double()
    mean = x.mean(dim=0)
    cov = torch.cov((x - mean).T)
    cov = (1 - shrinkage) * cov + shrinkage * torch.eye(len(cov), dtype=x.dtype) * cov.diagonal().mean()
    whitening = torch.linalg.cholesky(torch.linalg.inv(cov))  # L L^T = cov^-1, so |(f - m) L| is Mahalanobis
    return FeatureDistance(mean, whitening)


class JudgedModel(nn.Module):
    """The exported graph from 2.1.1: the probabilities (N, 2, H, W) and the input judgement's scores, the
    feature distance (N,) and the frontal score (N,), from one pass through the encoder."""

    def __init__(self, net: nn.Module, distance: FeatureDistance, frontal: FrontalScore):
        super().__init__()
        self.net, self.distance, self.frontal = net, distance, frontal

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.net.encoder(x)
        logits = self.net.segmentation_head(self.net.decoder(features))
        return torch.sigmoid(logits), self.distance(features[-1]), self.frontal(features[-1])


class FrontalScore(nn.Module):
    """How much an image looks like an upright, whole frontal chest radiograph: a linear probe (logit) on the
    encoder's deepest features averaged over a 4x4 grid of the image, so that it sees where things are: a
    turned, cropped or inverted chest keeps chest-like features in the wrong places. Fitted by
    ``fit_frontal_score``."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        for name, value in (("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, value.float())

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return ((grid_features(deepest) - self.mean) / self.scale) @ self.weight + self.bias


#: The frontal score's grid: 4x4 cells of the deepest feature map (8x8 at 256 px), 2x2 features each.
GRID_CELLS = 4


def grid_features(deepest: torch.Tensor, cells: int = GRID_CELLS) -> torch.Tensor:
    """(N, C, h, w) -> (N, cells * cells * C): the features averaged over each cell of a grid on the image."""
    n, c, h, w = deepest.shape
    return deepest.reshape(n, c, cells, h // cells, cells, w // cells).mean(dim=(3, 5)).flatten(1)


def fit_frontal_score(chests: torch.Tensor, others: torch.Tensor, weight_decay: float = 1e-2) -> FrontalScore:
    """Logistic regression of grid features (N, 16 C): Train chest radiographs (1) against the same images
    turned, cropped, flipped upside down and inverted (0), both classes weighted alike, L2-regularised."""
    x = torch.cat([chests, others]).double()
    y = torch.cat([torch.ones(len(chests)), torch.zeros(len(others))]).double()
    mean, scale = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / scale
    sample_weight = torch.where(y > 0, 0.5 / len(chests), 0.5 / len(others))
    weight = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=z.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = z @ weight + bias
        value = (sample_weight * nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        value = value + weight_decay * weight.square().sum() / 2
        value.backward()
        return value

    optimiser.step(loss)
    return FrontalScore(mean, scale, weight.detach(), bias.detach())
