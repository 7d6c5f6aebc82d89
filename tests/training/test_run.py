"""training.run: the state of one training run, which training.train builds and training.checkpoint
saves, in a module of its own; and the recipe's sampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.conftest import ROOT
from training.run import RecipeSampler


def test_checkpoint_resolves_its_run_type_without_the_train_command():
    """The checkpointer's annotations name a real class, and loading it does not load the command
    that imports it (the two modules imported each other)."""
    code = ("import sys, typing; import training.checkpoint as c; from training.run import Run; "
            "assert typing.get_type_hints(c.Checkpointer.save)['run'] is Run; "
            "assert 'training.train' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_the_sampler_replays_an_epoch_and_draws_fresh_normals_the_next():
    covid, normal = np.arange(10), np.arange(10, 30)
    sampler = RecipeSampler(covid, normal, normal_ratio=0.3, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == 13 and set(covid) <= set(first)
    assert list(RecipeSampler(covid, normal, 0.3, seed=7)) == first  # --resume replays the epoch exactly
    sampler.set_epoch(1)
    assert set(sampler) - set(covid) != set(first) - set(covid)
