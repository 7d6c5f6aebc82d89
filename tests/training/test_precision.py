"""The CPU precision probe picks whichever of fp32 and bf16 trains faster here."""

import pytest
import torch

from training import precision
from training.model import build_model


@pytest.mark.parametrize("fp32, bf16, expected", [(2.0, 1.0, "bf16"), (1.0, 2.0, "fp32")])
def test_auto_precision_on_cpu_takes_the_faster_of_fp32_and_bf16(monkeypatch, fp32, bf16, expected):
    seconds = {"fp32": fp32, "bf16": bf16}
    monkeypatch.setattr(precision, "step_seconds", lambda model, p, size: seconds[p])
    assert precision.resolve_precision("auto", torch.device("cpu"), 64) == expected
    assert precision.resolve_precision("bf16", torch.device("cpu"), 64) == "bf16"  # asked for: no probe


def test_step_seconds_times_a_real_step():
    assert 0 < precision.step_seconds(build_model().to(memory_format=torch.channels_last), "bf16", 64, batch=1) < 60
