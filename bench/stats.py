"""Percentiles and number formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p95 / p99 / max / mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
    }


def fmt_ms(summary: dict[str, float]) -> str:
    return (
        f"p50 {summary['p50_ms']:.2f} ms, p90 {summary['p90_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms,"
        f" max {summary['max_ms']:.2f} ms (n={summary['n']})"
    )


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan
