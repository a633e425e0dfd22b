"""The int8 arithmetic both exporters rely on."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.ir import quant as params


@pytest.mark.parametrize(
    ("low", "high"),
    [(-1.0, 1.0), (0.0, 6.0), (-0.3, 5.2), (-4.0, -1.0), (2.0, 3.0), (-1e-3, 1e3)],
    ids=["symmetric", "relu6", "skewed", "negative-only", "positive-only", "wide"],
)
def test_activation_grid_holds_zero_and_covers_range(low: float, high: float) -> None:
    q = params.activation_params(low, high)
    scale, zero_point = float(q.scale[0]), int(q.zero_point[0])
    assert -128 <= zero_point <= 127
    # 0.0 is a grid point: quantize(0) dequantizes to exactly 0 (zero padding stays exact).
    zero = params.dequantize_array(params.quantize_array(np.zeros(1, np.float32), q), q)
    assert zero[0] == 0.0
    # The grid reaches both ends of the (zero-extended) range within one step.
    assert scale * (-128 - zero_point) <= min(low, 0.0) + scale
    assert scale * (127 - zero_point) >= max(high, 0.0) - scale


def test_relu_range_puts_zero_point_at_int8_min() -> None:
    q = params.activation_params(0.0, 6.0)
    assert int(q.zero_point[0]) == -128
    assert float(q.scale[0]) == pytest.approx(6.0 / 255)


def test_degenerate_range_gets_a_usable_scale() -> None:
    q = params.activation_params(0.0, 0.0)
    assert float(q.scale[0]) > 0 and int(q.zero_point[0]) == 0


def test_rounding_is_half_to_even_and_saturates() -> None:
    q = params.fixed_params(1.0, 0)
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0], np.float32)
    assert params.quantize_array(values, q).tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_per_channel_weights_use_the_full_symmetric_range() -> None:
    weight = np.stack([np.linspace(-1, 1, 9), np.linspace(-0.01, 0.02, 9)]).reshape(2, 1, 3, 3).astype(np.float32)
    q = params.weight_params(weight, per_channel=True)
    assert q.axis == 0 and q.zero_point.tolist() == [0, 0]
    levels = params.quantize_array(weight, q)
    assert np.abs(levels).reshape(2, -1).max(axis=1).tolist() == [127, 127]
    error = np.abs(params.dequantize_array(levels, q) - weight).reshape(2, -1).max(axis=1)
    assert np.all(error <= q.scale / 2 + 1e-9)


def test_per_tensor_weights_share_one_scale() -> None:
    weight = np.array([[1.0, -2.0], [0.1, 0.2]], np.float32)
    q = params.weight_params(weight, per_channel=False)
    assert q.axis is None and float(q.scale[0]) == pytest.approx(2.0 / 127)


def test_bias_scale_is_input_scale_times_weight_scale() -> None:
    input_q = params.activation_params(-1.0, 1.0)
    weight_q = params.weight_params(np.array([[1.0], [0.5]], np.float32), per_channel=True)
    bias_q = params.bias_params(input_q, weight_q)
    assert bias_q.dtype == "int32" and bias_q.zero_point.tolist() == [0, 0]
    np.testing.assert_allclose(bias_q.scale, input_q.scale[0] * weight_q.scale, rtol=1e-6)


def test_zero_weight_channel_widens_so_the_bias_fits_int32() -> None:
    weight = np.zeros((1, 4), np.float32)
    bias = np.array([50.0], np.float32)
    input_q = params.activation_params(-1.0, 1.0)
    weight_q = params.widen_for_bias(params.weight_params(weight, per_channel=True), bias, float(input_q.scale[0]))
    bias_q = params.bias_params(input_q, weight_q)
    levels = params.quantize_array(bias, bias_q)
    assert abs(int(levels[0])) < 2**31 - 1
    assert params.dequantize_array(levels, bias_q)[0] == pytest.approx(50.0, rel=1e-6)


def test_weight_range_search_clips_outliers_at_four_bits() -> None:
    from edgetune.ir.graph import QParams
    from edgetune.ir.quant import dequantize_array, quantize_array, weight_params

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    weight[:, 0, 0, 0] = 6.0  # one large weight per channel sets the plain range
    plain, searched = weight_params(weight, True, levels=7), weight_params(weight, True, levels=7, search=True)

    def error(q: QParams) -> float:
        return float(((dequantize_array(quantize_array(weight, q), q) - weight) ** 2).sum())

    assert np.all(searched.scale < plain.scale) and error(searched) < 0.8 * error(plain)
    assert np.all(searched.scale >= 0.5 * plain.scale - 1e-7)  # never below half the largest magnitude
    # Without outliers at 8 bits the search leaves the range alone or nearly so.
    even = rng.uniform(-1, 1, (8, 64)).astype(np.float32)
    assert np.allclose(weight_params(even, True, search=True).scale, weight_params(even, True).scale, rtol=0.05)
