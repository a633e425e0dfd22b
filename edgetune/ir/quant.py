"""Quantization parameters with the numerics of the TFLite int8 specification.

- activations: int8, asymmetric, per tensor; the range always contains 0 exactly
- weights: int8, symmetric (zero point 0) in [-127, 127], per output channel or per tensor
- biases: int32, zero point 0, scale = input scale x weight scale

(https://ai.google.dev/edge/litert/models/quantization_spec). ONNX QDQ artifacts use the
same numbers; an unsigned-activation ONNX artifact adds 128 to the zero points.
"""

from __future__ import annotations

import numpy as np

from edgetune.ir.graph import QParams

INT8_MIN, INT8_MAX = -128, 127
INT16_MAX = 32767
INT64_BIAS_MAX = 2**53  # an int64 bias bound that float64 arithmetic still counts exactly
WEIGHT_MAX = 127
INT32_MAX = 2**31 - 1
# The smallest scale edgetune writes: an all-zero tensor still needs a positive scale.
MIN_SCALE = np.float32(1e-9)

# Ops with fixed output parameters (scale, zero point) in the TFLite int8 specification.
FIXED_OUTPUT_PARAMS = {
    "softmax": (1.0 / 256, -128),
    "sigmoid": (1.0 / 256, -128),
    "tanh": (1.0 / 128, 0),
    "log_softmax": (16.0 / 256, 127),
    "l2_normalize": (1.0 / 128, 0),
}


def activation_params(low: float, high: float) -> QParams:
    """Asymmetric int8 parameters whose grid covers [low, high] and holds 0 exactly."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0.0:
        return QParams.per_tensor(1.0, 0)
    scale = float(max(np.float32((high - low) / (INT8_MAX - INT8_MIN)), MIN_SCALE))
    zero_point = int(np.clip(np.round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return QParams.per_tensor(scale, zero_point)


def fixed_params(scale: float, zero_point: int) -> QParams:
    return QParams.per_tensor(scale, zero_point)


def weight_levels(bits: int) -> int:
    """The symmetric range [-L, L] of ``bits``-bit weights: 127 for 8 bits, 7 for 4."""
    return 2 ** (bits - 1) - 1


def levels_of(meta: dict, weight: str) -> int:  # type: ignore[type-arg]
    """The level range calibration gave weight tensor ``weight`` (graph.meta["weight_levels"])."""
    return int(meta.get("weight_levels", {}).get(weight, WEIGHT_MAX))


# Clipping ratios tried by the weight range search, largest (no clipping) first.
CLIP_RATIOS = np.linspace(1.0, 0.5, 26)


def weight_params(weight: np.ndarray, per_channel: bool, axis: int = 0, levels: int = WEIGHT_MAX, search: bool = False) -> QParams:
    """Symmetric weight parameters on [-levels, levels] (stored as int8), per channel along
    ``axis`` or per tensor. ``search``: the range is the largest magnitude times the ratio
    that minimises the weights' rounding and clipping error, rather than the largest
    magnitude itself (at 4 bits, clipping a few large weights buys a finer step for all)."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1) if per_channel else weight.reshape(1, -1)
    absmax = np.abs(rows).max(axis=1)
    if search:
        absmax = absmax * _best_clip(rows, absmax, levels)
    scale = np.maximum(absmax / levels, MIN_SCALE).astype(np.float32)
    if per_channel:
        return QParams(scale, np.zeros(scale.shape, np.int64), "int8", axis)
    return QParams.per_tensor(float(scale[0]), 0)


def clip_to_range(values: np.ndarray, q: QParams, levels: int) -> np.ndarray:
    """``values`` clipped to what symmetric parameters ``q`` on [-levels, levels] represent."""
    scale, _ = _broadcast(q, values.ndim)
    bound = scale.astype(np.float64) * levels
    return np.clip(values, -bound, bound).astype(np.float32)


def _best_clip(rows: np.ndarray, absmax: np.ndarray, levels: int) -> np.ndarray:
    """Per row, the ratio of CLIP_RATIOS with the least squared error after quantization."""
    values = rows.astype(np.float64)
    best_error = np.full(len(rows), np.inf)
    best = np.ones(len(rows))
    for ratio in CLIP_RATIOS:
        step = np.maximum(ratio * absmax.astype(np.float64) / levels, float(MIN_SCALE))[:, None]
        error = ((np.clip(np.round(values / step), -levels, levels) * step - values) ** 2).sum(axis=1)
        better = error < best_error
        best_error, best = np.where(better, error, best_error), np.where(better, ratio, best)
    return best


def widen_for_bias(weight_q: QParams, bias: np.ndarray, input_scale: float) -> QParams:
    """Raise weight scales where the bias would overflow int32 on the bias grid.

    A channel whose weights are (nearly) zero gets a tiny scale, and ``bias / (input
    scale x weight scale)`` would not fit in int32; a larger weight scale costs nothing there.
    """
    needed = np.abs(bias).astype(np.float64) / (input_scale * (INT32_MAX // 2))
    scale = weight_q.scale.astype(np.float64)
    if weight_q.axis is None:
        scale = np.maximum(scale, needed.max(initial=0.0))
    else:
        scale = np.maximum(scale, needed)
    if np.array_equal(scale.astype(np.float32), weight_q.scale):
        return weight_q
    return QParams(scale.astype(np.float32), weight_q.zero_point, weight_q.dtype, weight_q.axis)


def bias_params(input_q: QParams, weight_q: QParams) -> QParams:
    """int32 bias parameters, per channel or per tensor like the weights (TFLite requires the match)."""
    scale = (np.float64(input_q.scale[0]) * weight_q.scale.astype(np.float64)).astype(np.float32)
    if weight_q.axis is None:
        return QParams.per_tensor(float(scale[0]), 0, "int32")
    return QParams(scale, np.zeros(scale.size, np.int64), "int32", 0)


def _broadcast(q: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point shaped to broadcast along the channel axis of a rank-``ndim`` tensor."""
    if q.axis is None:
        return q.scale, q.zero_point
    shape = [1] * ndim
    shape[q.axis] = -1
    return q.scale.reshape(shape), q.zero_point.reshape(shape)


def quantize_array(values: np.ndarray, q: QParams) -> np.ndarray:
    """Real values to their integer levels (round half to even, saturate), as ONNX and TFLite do."""
    scale, zero_point = _broadcast(q, values.ndim)
    levels = np.round(values.astype(np.float64) / scale.astype(np.float64)) + zero_point
    return np.clip(levels, q.qmin, q.qmax).astype(q.dtype)


def dequantize_array(levels: np.ndarray, q: QParams) -> np.ndarray:
    scale, zero_point = _broadcast(q, levels.ndim)
    return ((levels.astype(np.int64) - zero_point) * scale).astype(np.float32)


def int16_params(q: QParams) -> QParams:
    """Symmetric int16 parameters (zero point 0, as TFLite's 16x8 kernels require) covering the
    range that the int8 parameters ``q`` cover."""
    low, high = float(q.scale[0]) * (INT8_MIN - int(q.zero_point[0])), float(q.scale[0]) * (INT8_MAX - int(q.zero_point[0]))
    return QParams.per_tensor(max(abs(low), abs(high), float(MIN_SCALE)) / INT16_MAX, 0, "int16")
