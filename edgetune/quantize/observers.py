"""Activation range observers: min/max, percentile and MSE-optimal ranges from a histogram.

Calibration runs the float graph once: it takes each tensor's exact min and max and keeps
an even sample of its values, from which a histogram over [min, max] is built. Every
method then reads the same histogram, so the report can show which range each method
would have chosen.
Entropy (KL) calibration is left out: for int8 activations it picks ranges close to the
MSE-optimal ones, and ORT's implementation often returns the min/max range unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

BINS = 2048
QLEVELS = 255  # int8 steps between the range ends
# Calibration reads every value for the exact min and max, and keeps an even stride of at
# most this many values per tensor and batch; the histogram is built from those at the end.
SAMPLE_PER_BATCH = 1 << 15


@dataclass
class TensorStats:
    low: float = float("inf")
    high: float = float("-inf")
    kept: list[torch.Tensor] = field(default_factory=list)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.float64))

    def update(self, value: torch.Tensor) -> None:
        low, high = torch.aminmax(value)
        flat = value.reshape(-1)
        stride = max(1, flat.numel() // SAMPLE_PER_BATCH)
        self.add(float(low), float(high), flat[::stride].clone())

    def add(self, low: float, high: float, kept: torch.Tensor) -> None:
        """A batch's summary: its minimum, maximum and every ``max(1, size // SAMPLE_PER_BATCH)``-th
        value (what :meth:`update` takes of a whole batch; ONNX Runtime can compute it too)."""
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        self.kept.append(kept)

    def finish(self) -> None:
        """Build the histogram over [low, high] from the kept values."""
        if self.kept and self.high > self.low:
            values = torch.cat(self.kept)
            self.hist = torch.histc(values, BINS, self.low, self.high).double().numpy()
        self.kept = []

    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, BINS + 1)


def minmax_range(stats: TensorStats) -> tuple[float, float]:
    return stats.low, stats.high


def percentile_range(stats: TensorStats, percentile: float = 99.99) -> tuple[float, float]:
    """Clip the rarest (100 - percentile)% of values on each side that reaches past zero."""
    total = stats.hist.sum()
    if total == 0:
        return minmax_range(stats)
    cdf = np.cumsum(stats.hist) / total
    edges = stats.edges()
    tail = 1.0 - percentile / 100.0
    high = float(edges[min(int(np.searchsorted(cdf, 1.0 - tail)) + 1, BINS)])
    low = float(edges[int(np.searchsorted(cdf, tail))])
    return (min(low, 0.0) if stats.low < 0 else stats.low), (max(high, 0.0) if stats.high > 0 else stats.high)


def _quant_error(centers: np.ndarray, counts: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Expected squared error of asymmetric 8-bit quantization of the histogram, per candidate range."""
    lows = np.minimum(lows, 0.0)[:, None]
    highs = np.maximum(highs, 0.0)[:, None]
    scale = np.maximum((highs - lows) / QLEVELS, 1e-12)
    zero = np.round(-lows / scale)
    levels = np.clip(np.round(centers[None, :] / scale) + zero, 0, QLEVELS)
    error = (centers[None, :] - (levels - zero) * scale) ** 2
    return (error * counts[None, :]).sum(axis=1)  # type: ignore[no-any-return]


def mse_range(stats: TensorStats, steps: int = 64) -> tuple[float, float]:
    """The range that minimises the expected quantization MSE (clipping plus rounding)."""
    if stats.hist.sum() == 0 or stats.high <= stats.low:
        return minmax_range(stats)
    edges = stats.edges()
    centers = (edges[:-1] + edges[1:]) / 2
    keep = stats.hist > 0
    centers, counts = centers[keep], stats.hist[keep]
    fractions = np.linspace(0.15, 1.0, steps)
    if stats.low >= 0 or stats.high <= 0:  # one-sided: shrink the far end only
        lows = np.full(steps, min(stats.low, 0.0)) if stats.low >= 0 else stats.low * fractions
        highs = stats.high * fractions if stats.low >= 0 else np.full(steps, max(stats.high, 0.0))
    else:
        coarse = np.linspace(0.3, 1.0, 16)
        grid_low, grid_high = np.meshgrid(stats.low * coarse, stats.high * coarse)
        lows, highs = grid_low.ravel(), grid_high.ravel()
    best = int(np.argmin(_quant_error(centers, counts, lows, highs)))
    return float(lows[best]), float(highs[best])


METHODS: dict[str, Callable[[TensorStats], tuple[float, float]]] = {
    "minmax": minmax_range,
    "percentile": percentile_range,
    "mse": mse_range,
}
# Per tensor, whichever of METHODS' ranges moves the model's output least
# (edgetune.quantize.output_error).
OUTPUT_METHOD = "output"
ALL_METHODS = (*METHODS, OUTPUT_METHOD)
