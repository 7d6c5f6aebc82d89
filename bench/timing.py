"""Timing of one call, as the benchmarks report it."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """Median milliseconds of ``runs`` calls of ``fn``, after one call outside the timing."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))
