"""Timing helpers shared by the benchmark harnesses (run them as scripts from the repo root)."""

from __future__ import annotations

import time


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def alternate(a, b, repeats: int = 3) -> tuple[list, list]:
    """Every (seconds, result) run of a and of b, alternating, a first."""
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(timed(a))
        runs_b.append(timed(b))
    return runs_a, runs_b


def best_of_pair(a, b, repeats: int = 3) -> tuple[tuple[float, object], tuple[float, object]]:
    """Alternate a and b `repeats` times and keep each one's fastest run: warm-up and
    page-cache effects then favour neither side."""
    runs_a, runs_b = alternate(a, b, repeats)
    return min(runs_a, key=lambda r: r[0]), min(runs_b, key=lambda r: r[0])
