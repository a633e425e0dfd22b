from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetune.quantize.observers import METHODS, TensorStats, _quant_error, percentile_range


def _stats(values: np.ndarray) -> TensorStats:
    stats = TensorStats()
    for chunk in np.array_split(values.astype(np.float32), 4):
        stats.update(torch.from_numpy(chunk))
    stats.finish()
    return stats


def test_minmax_is_exact_across_batches(rng: np.random.Generator) -> None:
    values = rng.normal(size=10_000)
    low, high = METHODS["minmax"](_stats(values))
    assert low == pytest.approx(values.min(), abs=1e-6) and high == pytest.approx(values.max(), abs=1e-6)


def test_percentile_clips_rare_outliers(rng: np.random.Generator) -> None:
    values = np.concatenate([rng.normal(size=100_000), [60.0, -70.0]])
    low, high = percentile_range(_stats(values), 99.9)
    assert 2.0 < high < 5.0 and -5.0 < low < -2.0


def test_mse_range_beats_minmax_on_heavy_tails(rng: np.random.Generator) -> None:
    values = rng.laplace(size=200_000)
    stats = _stats(values)
    mse_low, mse_high = METHODS["mse"](stats)
    mm_low, mm_high = METHODS["minmax"](stats)
    assert mse_high < mm_high and mse_low > mm_low
    edges = stats.edges()
    centers = (edges[:-1] + edges[1:]) / 2
    errors = _quant_error(centers, stats.hist, np.array([mse_low, mm_low]), np.array([mse_high, mm_high]))
    assert errors[0] < errors[1]


def test_one_sided_ranges_keep_zero_as_the_low_end(rng: np.random.Generator) -> None:
    values = np.abs(rng.normal(size=50_000))
    for method in METHODS.values():
        low, _ = method(_stats(values))
        assert low == pytest.approx(values.min(), abs=1e-3) or low == 0.0
    assert METHODS["mse"](_stats(values))[0] == 0.0
