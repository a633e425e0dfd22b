"""Latency statistics from the raw per-run times."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def median_interval(times: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: the order statistics at
    ranks n/2 -+ z*sqrt(n)/2 (the normal approximation of the binomial; Conover, Practical
    Nonparametric Statistics, 3rd ed., section 3.2)."""
    ordered = np.sort(times)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)) - 1)
    high = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(ordered[low]), float(ordered[high])


def latency_summary(times_ms: list[float], warmup: int) -> dict[str, Any]:
    times = np.asarray(times_ms, dtype=np.float64)
    low, high = median_interval(times)
    mean = float(times.mean())
    return {
        "runs": int(len(times)),
        "warmup": warmup,
        "p50_ms": float(np.percentile(times, 50)),
        "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": mean,
        "std_ms": float(times.std(ddof=1)) if len(times) > 1 else 0.0,
        "min_ms": float(times.min()),
        "max_ms": float(times.max()),
        "median_ci95_ms": [low, high],
        "cv": float(times.std(ddof=1) / mean) if len(times) > 1 and mean > 0 else 0.0,
        "throughput_per_s": 1e3 / mean if mean > 0 else None,
    }
