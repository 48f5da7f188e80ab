"""Shared timing helper for the benchmark scripts (not a benchmark itself: no ``bench_`` prefix)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    fn: Callable[[], object],
    repeats: int,
    *,
    warmup: bool = True,
    sync: Callable[[], object] | None = None,
) -> float:
    """Median wall time of ``repeats`` calls of ``fn``; ``sync`` waits for queued device work."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
