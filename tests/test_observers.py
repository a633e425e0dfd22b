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


def test_summaries_from_onnx_runtime_are_what_the_whole_tensors_give(rng: np.random.Generator) -> None:
    """Calibration fetches min, max and a strided sample of each activation from ONNX Runtime
    instead of the activation: the same numbers as TensorStats.update on the whole tensor."""
    import onnxruntime as ort

    from edgetune.capture import capture
    from edgetune.export.config import INPUT_NAME
    from edgetune.export.onnx.writer import build_onnx
    from edgetune.quantize.calibrate import observed_tensors
    from edgetune.quantize.observers import SAMPLE_PER_BATCH
    from edgetune.quantize.summaries import add_summaries
    from edgetune.zoo import mobilenet_v3_small

    model = mobilenet_v3_small()
    graph = capture(model, tuple(model.input_shape))
    wanted = observed_tensors(graph)
    plain, exposed = build_onnx(graph, quantized=False, expose=wanted)
    summarized, _ = build_onnx(graph, quantized=False, expose=wanted)
    ranks = {exposed[n]: len(graph.tensors[n].shape) for n in wanted if exposed[n] != INPUT_NAME}
    values = sorted(ranks)
    assert {2, 4} <= set(ranks.values()), "a tensor reduced whole and one reduced by rows first"
    summaries = add_summaries(summarized, {v: ranks[v] for v in values}, SAMPLE_PER_BATCH)
    x = rng.normal(size=(3, *model.input_shape)).astype(np.float32)
    whole = dict(zip(values, ort.InferenceSession(plain.SerializeToString()).run(values, {INPUT_NAME: x})))
    fetch = [n for s in summaries.values() for n in (s.low, s.high, s.kept)]
    small = dict(zip(fetch, ort.InferenceSession(summarized.SerializeToString()).run(fetch, {INPUT_NAME: x})))
    strides = set()
    for value, summary in summaries.items():
        reference = TensorStats()
        reference.update(torch.from_numpy(whole[value]))
        assert float(small[summary.low]) == reference.low and float(small[summary.high]) == reference.high, value
        assert np.array_equal(small[summary.kept], reference.kept[0].numpy()), value
        strides.add(max(1, whole[value].size // SAMPLE_PER_BATCH))
    assert 1 in strides and max(strides) > 1, "both a whole small tensor and a strided large one were compared"
