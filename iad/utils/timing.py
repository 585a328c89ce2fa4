"""Timing helpers shared by the cost table and the benchmarks (no torch import)."""

from __future__ import annotations

from collections.abc import Callable
import statistics
import time


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """Median wall time of `repeats` calls of `fn`; `warmup` first makes one untimed call (lazy set-up, caches)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
