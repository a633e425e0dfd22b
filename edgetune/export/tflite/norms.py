"""LayerNorm and GroupNorm (InstanceNorm is GroupNorm with a group per channel).

TFLite has no operator for either, and the converter's int8 decomposition (a mean, a squared
difference, RSQRT, each requantized) loses the most where the statistics are taken. Each is a
float island instead: DEQUANTIZE, the normalization in float, QUANTIZE onto the int8 output,
the function ONNX computes between its DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import Op, Options, _reshape_op, tfl_op
from edgetune.ir.graph import Node

FLOAT = tflite.TensorType.FLOAT32


def _float(b: TflBuilder, name: str, shape: list[int]) -> int:
    return b.model.add_tensor(TflTensor(name, shape, FLOAT))


def _mean(b: TflBuilder, x: int, axes: list[int], name: str) -> int:
    shape = list(b.model.tensors[x].shape)
    out = _float(b, name, [1 if i in axes else d for i, d in enumerate(shape)])

    def options(fb: flatbuffers.Builder) -> int:
        tflite.ReducerOptionsStart(fb)
        tflite.ReducerOptionsAddKeepDims(fb, True)
        return int(tflite.ReducerOptionsEnd(fb))

    b.op(Op.MEAN, [x, b.int32_const(f"{name}_axes", axes)], [out], Options.ReducerOptions, options, version=1)
    return out


def _binary(b: TflBuilder, code: int, x: int, y: int, name: str) -> int:
    out = _float(b, name, list(b.model.tensors[x].shape))
    b.op(code, [x, y], [out], version=1)
    return out


def _float_input(b: TflBuilder, node: Node) -> int:
    x = b.read(node.inputs[0])
    if b.model.tensors[x].dtype == FLOAT:
        return x
    floating = _float(b, f"{node.name}_float_input", list(b.model.tensors[x].shape))
    b.op(Op.DEQUANTIZE, [x], [floating])
    return floating


def _standardize(b: TflBuilder, node: Node, x: int, axes: list[int]) -> int:
    """(x - mean) * rsqrt(mean((x - mean)^2) + eps), the statistics over ``axes``."""
    centered = _binary(b, Op.SUB, x, _mean(b, x, axes, f"{node.name}_mean"), f"{node.name}_centered")
    variance = _mean(b, _binary(b, Op.MUL, centered, centered, f"{node.name}_squared"), axes, f"{node.name}_variance")
    eps = b.const(f"{node.name}_eps", np.asarray([node.attrs["eps"]], np.float32), FLOAT)
    shifted = _binary(b, Op.ADD, variance, eps, f"{node.name}_variance_eps")
    inverse = _float(b, f"{node.name}_rstd", list(b.model.tensors[shifted].shape))
    b.op(Op.RSQRT, [shifted], [inverse], version=1)
    return _binary(b, Op.MUL, centered, inverse, f"{node.name}_normalized")


def _affine_and_output(b: TflBuilder, node: Node, normalized: int) -> None:
    """* gamma + beta over the last stored axis, then onto the node's (int8 or float) output."""
    gamma, beta = (
        b.const(f"{node.name}_{part}", b.graph.const(name).astype(np.float32), FLOAT)
        for part, name in zip(("gamma", "beta"), node.inputs[1:])
    )
    scaled = _binary(b, Op.MUL, normalized, gamma, f"{node.name}_scaled")
    out = b.define(node.outputs[0])
    if b.model.tensors[out].dtype == FLOAT:
        b.op(Op.ADD, [scaled, beta], [out], version=1)
        return
    b.op(Op.QUANTIZE, [_binary(b, Op.ADD, scaled, beta, f"{node.name}_float_output")], [out])


@tfl_op("layer_norm")
def layer_norm(b: TflBuilder, node: Node) -> None:
    x = _float_input(b, node)
    _affine_and_output(b, node, _standardize(b, node, x, [len(b.model.tensors[x].shape) - 1]))


@tfl_op("group_norm")
def group_norm(b: TflBuilder, node: Node) -> None:
    """NHWC [N, H, W, C] seen as [N, H*W, G, C/G]: the statistics over axes 1 and 3."""
    x = _float_input(b, node)
    n, h, w, c = b.model.tensors[x].shape
    groups = node.attrs["groups"]
    grouped = _float(b, f"{node.name}_grouped", [n, h * w, groups, c // groups])
    _reshape_op(b, x, b.model.tensors[grouped].shape, grouped, f"{node.name}_grouped")
    normalized = _standardize(b, node, grouped, [1, 3])
    back = _float(b, f"{node.name}_map", [n, h, w, c])
    _reshape_op(b, normalized, [n, h, w, c], back, f"{node.name}_map")
    _affine_and_output(b, node, back)
