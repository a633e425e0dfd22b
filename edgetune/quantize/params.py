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
WEIGHT_MAX = 127
INT32_MAX = 2**31 - 1
# The smallest scale edgetune writes: an all-zero tensor still needs a positive scale.
MIN_SCALE = np.float32(1e-9)


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


def weight_params(weight: np.ndarray, per_channel: bool, axis: int = 0, levels: int = WEIGHT_MAX) -> QParams:
    """Symmetric weight parameters on [-levels, levels] (stored as int8), per channel along
    ``axis`` or per tensor."""
    if per_channel:
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        absmax = np.abs(weight).max(axis=reduce) if reduce else np.abs(weight)
        scale = np.maximum(absmax / levels, MIN_SCALE).astype(np.float32)
        return QParams(scale, np.zeros(scale.shape, np.int64), "int8", axis)
    return QParams.per_tensor(max(float(np.abs(weight).max()) / levels, float(MIN_SCALE)), 0)


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
