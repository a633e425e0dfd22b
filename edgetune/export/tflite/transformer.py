"""LayerNorm and batched matrix products.

TFLite has no LayerNorm operator, and the converter's int8 decomposition (a mean, a squared
difference, RSQRT, each requantized) loses the most where transformers are most sensitive.
LayerNorm is written as a float island instead: DEQUANTIZE, the normalization in float over the
last axis, QUANTIZE onto the int8 output, the same function ONNX's LayerNormalization computes
between its DequantizeLinear and QuantizeLinear. A product of two activations (attention's
scores and its weighted values) is BATCH_MATMUL, int8 on both sides.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.layout import plain_tensors
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import UNSUPPORTED_CHECKS, Op, Options, tfl_op
from edgetune.ir.graph import Graph, Node

FLOAT = tflite.TensorType.FLOAT32
BATCH_MATMUL_INT8 = 2  # op_version.cc: an int8 BATCH_MATMUL (TFLite 2.3)


def _float(b: TflBuilder, name: str, shape: list[int]) -> int:
    return b.model.add_tensor(TflTensor(name, shape, FLOAT))


def _mean_last(b: TflBuilder, x: int, name: str) -> int:
    shape = b.model.tensors[x].shape
    out = _float(b, name, [*shape[:-1], 1])

    def options(fb: flatbuffers.Builder) -> int:
        tflite.ReducerOptionsStart(fb)
        tflite.ReducerOptionsAddKeepDims(fb, True)
        return int(tflite.ReducerOptionsEnd(fb))

    b.op(Op.MEAN, [x, b.int32_const(f"{name}_axis", [len(shape) - 1])], [out], Options.ReducerOptions, options, version=1)
    return out


def _binary(b: TflBuilder, code: int, x: int, y: int, name: str) -> int:
    out = _float(b, name, list(b.model.tensors[x].shape))
    b.op(code, [x, y], [out], version=1)
    return out


@tfl_op("layer_norm")
def layer_norm(b: TflBuilder, node: Node) -> None:
    """(x - mean) * rsqrt(mean((x - mean)^2) + eps) * gamma + beta over the last axis, in float."""
    x = b.read(node.inputs[0])
    if b.model.tensors[x].dtype != FLOAT:
        floating = _float(b, f"{node.name}_float_input", list(b.model.tensors[x].shape))
        b.op(Op.DEQUANTIZE, [x], [floating])
        x = floating
    gamma, beta = (
        b.const(f"{node.name}_{part}", b.graph.const(name).astype(np.float32), FLOAT)
        for part, name in zip(("gamma", "beta"), node.inputs[1:])
    )
    centered = _binary(b, Op.SUB, x, _mean_last(b, x, f"{node.name}_mean"), f"{node.name}_centered")
    variance = _mean_last(b, _binary(b, Op.MUL, centered, centered, f"{node.name}_squared"), f"{node.name}_variance")
    eps = b.const(f"{node.name}_eps", np.asarray([node.attrs["eps"]], np.float32), FLOAT)
    shifted = _binary(b, Op.ADD, variance, eps, f"{node.name}_variance_eps")
    inverse = _float(b, f"{node.name}_rstd", list(b.model.tensors[shifted].shape))
    b.op(Op.RSQRT, [shifted], [inverse], version=1)
    scaled = _binary(b, Op.MUL, _binary(b, Op.MUL, centered, inverse, f"{node.name}_normalized"), gamma, f"{node.name}_scaled")
    out = b.define(node.outputs[0])
    if b.model.tensors[out].dtype == FLOAT:
        b.op(Op.ADD, [scaled, beta], [out], version=1)
        return
    result = _binary(b, Op.ADD, scaled, beta, f"{node.name}_float_output")
    b.op(Op.QUANTIZE, [result], [out])


@tfl_op("matmul")
def matmul(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.BatchMatMulOptionsStart(fb)
        return int(tflite.BatchMatMulOptionsEnd(fb))

    version = BATCH_MATMUL_INT8 if b.quantized else 1
    if b.quantized:
        b.require_runtime("2.3.0")
    inputs = [b.read(name) for name in node.inputs]
    b.op(Op.BATCH_MATMUL, inputs, [b.define(node.outputs[0])], Options.BatchMatMulOptions, options, version)


def _batched(graph: Graph, node: Node) -> str | None:
    ranks = [len(graph.tensors[name].shape) for name in node.inputs]
    if ranks[0] != ranks[1] or ranks[0] not in (3, 4) or (ranks[0] == 4 and not set(node.inputs) <= plain_tensors(graph)):
        return "a matrix product of tensors other than [batch, rows, cols] or [batch, heads, rows, cols]"
    return None


UNSUPPORTED_CHECKS["matmul"] = _batched
