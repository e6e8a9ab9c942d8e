"""Timing helpers: medians of per-call wall-clock latency, measured in repeated blocks."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_us(fn: Callable[[], object], *, min_time_s: float = 0.2, blocks: int = 7, warmup: int = 3) -> float:
    """Median over ``blocks`` blocks of the mean per-call latency (microseconds) of ``fn()``.

    Each block runs enough calls to last about ``min_time_s / blocks`` seconds.
    """
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    per_block = max(1, int(min_time_s / blocks / one))
    samples = []
    for _ in range(blocks):
        t0 = time.perf_counter_ns()
        for _ in range(per_block):
            fn()
        samples.append((time.perf_counter_ns() - t0) / per_block / 1e3)
    return statistics.median(samples)
