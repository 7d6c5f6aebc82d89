"""The CPU precision probe picks whichever of fp32 and bf16 trains faster here."""

import time

import pytest
import torch

from training import precision


@pytest.mark.parametrize("fp32, bf16, expected", [(2.0, 1.0, "bf16"), (1.0, 2.0, "fp32")])
def test_auto_precision_on_cpu_takes_the_faster_of_fp32_and_bf16(monkeypatch, fp32, bf16, expected):
    seconds = {"fp32": fp32, "bf16": bf16}
    monkeypatch.setattr(precision, "step_seconds", lambda model, p, size: seconds[p])
    assert precision.resolve_precision("auto", torch.device("cpu"), 64) == expected
    assert precision.resolve_precision("bf16", torch.device("cpu"), 64) == "bf16"  # asked for: no probe


class Timed(torch.nn.Module):
    """A one-layer model whose first forward (the warm-up) is slow, recording its compute dtype."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        out = self.conv(x)
        self.dtypes.append(out.dtype)
        time.sleep(0.5 if len(self.dtypes) == 1 else 0.02)
        return out


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_step_seconds_times_forward_and_backward_in_that_precision_after_a_warm_up(name, dtype):
    model = Timed()
    seconds = precision.step_seconds(model, name, 16, batch=1, steps=2)
    assert model.dtypes == [dtype] * 3  # one warm-up step, then the two timed ones
    assert 0.02 <= seconds < 0.5  # the warm-up is not counted
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0  # backward ran
