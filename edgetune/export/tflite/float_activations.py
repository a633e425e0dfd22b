"""ELU, Softplus, Mish and a general clamp: no int8 kernel in TFLite, so a float island each (DEQUANTIZE, the
function in float operators, QUANTIZE onto the int8 output), the function ONNX computes
between its DequantizeLinear and QuantizeLinear. Softplus is written max(x, 0) +
log(1 + exp(-|x|)), which no input overflows; Mish is x * tanh(softplus(x)); a clamp is
MAXIMUM and MINIMUM with its bounds (a masked mean's count, clamped away from zero)."""

from __future__ import annotations

import numpy as np
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import Op, tfl_op
from edgetune.ir.graph import Node

FLOAT = tflite.TensorType.FLOAT32


class _Float:
    """Float operators on one shape, each output a fresh tensor."""

    def __init__(self, b: TflBuilder, node: Node, shape: list[int]) -> None:
        self.b, self.node, self.shape, self.count = b, node, shape, 0

    def tensor(self) -> int:
        self.count += 1
        return self.b.model.add_tensor(TflTensor(f"{self.node.name}_f{self.count}", self.shape, FLOAT))

    def op(self, code: int, inputs: list[int]) -> int:
        out = self.tensor()
        self.b.op(code, inputs, [out], version=1)
        return out

    def scalar(self, value: float) -> int:
        self.count += 1
        return self.b.const(f"{self.node.name}_c{self.count}", np.asarray([value], np.float32), FLOAT)


def _softplus(f: _Float, x: int) -> int:
    negative_abs = f.op(Op.MUL, [f.op(Op.ABS, [x]), f.scalar(-1.0)])
    tail = f.op(Op.LOG, [f.op(Op.ADD, [f.op(Op.EXP, [negative_abs]), f.scalar(1.0)])])
    return f.op(Op.ADD, [f.op(Op.RELU, [x]), tail])


@tfl_op("elu", "softplus", "mish", "clamp")
def float_activation(b: TflBuilder, node: Node) -> None:
    x = b.read(node.inputs[0])
    f = _Float(b, node, list(b.model.tensors[x].shape))
    if b.model.tensors[x].dtype != FLOAT:
        floating = f.tensor()
        b.op(Op.DEQUANTIZE, [x], [floating])
        x = floating
    if node.op == "elu":  # max(x, 0) + alpha * (exp(min(x, 0)) - 1): TFLite's reference kernels have no ELU
        below = f.op(Op.MINIMUM, [x, f.scalar(0.0)])
        curve = f.op(Op.MUL, [f.op(Op.SUB, [f.op(Op.EXP, [below]), f.scalar(1.0)]), f.scalar(node.attrs["alpha"])])
        result = f.op(Op.ADD, [f.op(Op.RELU, [x]), curve])
    elif node.op == "clamp":
        result = x
        if node.attrs.get("min") is not None:
            result = f.op(Op.MAXIMUM, [result, f.scalar(node.attrs["min"])])
        if node.attrs.get("max") is not None:
            result = f.op(Op.MINIMUM, [result, f.scalar(node.attrs["max"])])
    elif node.op == "softplus":
        result = _softplus(f, x)
    else:
        result = f.op(Op.MUL, [x, f.op(Op.TANH, [_softplus(f, x)])])
    if b.quantized and b.graph.tensors[node.outputs[0]].quant is not None:
        b.op(Op.QUANTIZE, [result], [b.define(node.outputs[0])])
    else:  # a float model: the last float tensor is the output
        b.model.tensors[result].name = node.outputs[0]
        b.index[node.outputs[0]] = result
