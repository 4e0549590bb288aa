"""The benchmarks' one timing loop (imported as ``timing`` when a benchmark runs as a script)."""

from __future__ import annotations

import time
from collections.abc import Callable


def ms_per_call(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Mean wall-clock milliseconds of ``function()`` over ``repeats`` calls, after ``warmup``
    untimed calls (allocator growth, oneDNN's primitive cache, a traced graph's fusion)."""
    for _ in range(warmup):
        function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3
