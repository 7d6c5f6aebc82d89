"""What one training run works with: the recipe's sampler and :class:`Run`, the state that
:mod:`training.train` builds and :mod:`training.checkpoint` saves and restores (a module of its
own so that neither of those imports the other)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from training.data import LoadedSamples, recipe_epoch_indices


class RecipeSampler(Sampler[int]):
    """Indices of one recipe epoch; deterministic per (seed, epoch), so ``--resume`` replays exactly."""

    def __init__(self, covid: np.ndarray, normal: np.ndarray, normal_ratio: float, seed: int):
        self.covid, self.normal, self.normal_ratio, self.seed = covid, normal, normal_ratio, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(recipe_epoch_indices(self.covid, self.normal, self.normal_ratio, rng).tolist())

    def __len__(self) -> int:
        return len(self.covid) + min(len(self.normal), int(round(self.normal_ratio * len(self.covid))))


@dataclass
class Run:
    """Everything one training run works with, built by :func:`training.train.setup`."""

    args: argparse.Namespace
    device: torch.device
    precision: str
    val_data: LoadedSamples
    sampler: RecipeSampler
    loader: DataLoader
    model: torch.nn.Module
    ema: torch.optim.swa_utils.AveragedModel | None
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    config: dict[str, Any]

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that are validated, selected and exported: the average when there is one."""
        return self.model if self.ema is None else self.ema.module
