"""IR op -> TFLite operators, one function per op family.

Each function reads its inputs with ``b.read`` (NHWC tensors), defines its output with
``b.define`` and appends the operators. :func:`unsupported` names what a node needs that
TFLite lacks, so that every problem is reported before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite import layout
from edgetune.export.tflite.builder import ACTIVATIONS, VERSIONS, TflBuilder, quant_spec
from edgetune.export.tflite.model import QuantSpec, TflTensor
from edgetune.ir.graph import Graph, Node, depthwise_multiplier
from edgetune.ir.padding import same_padding
from edgetune.ir.quant import int16_params, quantize_array
from edgetune.registry import Registry

TflOp = Callable[[TflBuilder, Node], None]
TFLITE_OPS: Registry[TflOp] = Registry("TFLite writer")
tfl_op = TFLITE_OPS.register
Op = tflite.BuiltinOperator
Options = tflite.BuiltinOptions
# Versions of the 16x8 operators (int16 activations, int8 weights, int64 bias), as TFLite's
# converter numbers them (tensorflow/lite/tools/versioning/op_version.cc).
INT16_VERSIONS = {Op.CONV_2D: 4, Op.DEPTHWISE_CONV_2D: 5, Op.FULLY_CONNECTED: 7}
PAD_INT16_VERSION = 3
VERSIONS_INT16_QUANTIZE = 2  # QUANTIZE with an int16 output
GROUPED_CONV_VERSION = 6


# op -> a check naming what a node of that op needs that TFLite lacks (ops in other modules plug in)
UNSUPPORTED_CHECKS: dict[str, Callable[[Graph, Node], str | None]] = {}


def unsupported(graph: Graph, node: Node) -> str | None:
    """Why ``node`` cannot be written to TFLite, or None."""
    if node.op not in TFLITE_OPS:
        return node.op
    if node.op in UNSUPPORTED_CHECKS:
        return UNSUPPORTED_CHECKS[node.op](graph, node)
    if node.op in layout.PLAIN and (reason := layout.needs_plain(graph, node)):
        return reason
    if node.op == "pad" and node.attrs["value"] != 0.0:
        return "pad with a non-zero value"
    return None


def _same_or_none(graph: Graph, node: Node, kernel: list[int], dilation: list[int]) -> int | None:
    """tflite.Padding for the node's pads if SAME or VALID expresses them, else None."""
    top, left, bottom, right = node.attrs["pads"]
    if not (top or left or bottom or right):
        return int(tflite.Padding.VALID)
    _, _, height, width = graph.tensors[node.inputs[0]].shape
    stride = node.attrs["stride"]
    effective = [(kernel[i] - 1) * dilation[i] + 1 for i in range(2)]
    if (top, bottom) == same_padding(height, effective[0], stride[0]) and (left, right) == same_padding(width, effective[1], stride[1]):
        return int(tflite.Padding.SAME)
    return None


def _padded_input(b: TflBuilder, node: Node, kernel: list[int], dilation: list[int]) -> tuple[int, int]:
    """The input tensor and padding mode; pads SAME cannot express become a PAD operator."""
    mode = _same_or_none(b.graph, node, kernel, dilation)
    if mode is not None:
        return b.read(node.inputs[0]), mode
    return _pad_explicitly(b, node)


def _pad_explicitly(b: TflBuilder, node: Node) -> tuple[int, int]:
    """A PAD operator (int8: pads with the zero point, i.e. real 0) before a VALID op."""
    x = b.read(node.inputs[0])
    top, left, bottom, right = node.attrs["pads"]
    n, h, w, c = b.model.tensors[x].shape
    padded = b.like(f"{node.name}_padded", [n, h + top + bottom, w + left + right, c], x)
    widths = b.const(f"{node.name}_pads", np.asarray([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32), tflite.TensorType.INT32)
    if b.model.tensors[x].dtype == tflite.TensorType.INT16:  # between two 16x8 layers
        b.op(Op.PAD, [x, widths], [padded], version=PAD_INT16_VERSION)
        b.require_runtime("2.4.0")
    else:
        b.op(Op.PAD, [x, widths], [padded])
    return padded, int(tflite.Padding.VALID)


def _nonnegative(graph: Graph, name: str) -> bool:
    """A tensor after a ReLU or ReLU6 (a ResNet stem's max pool reads one): zero padding is as
    low as any of its values, so a max pool may pad with PAD, which XNNPACK delegates."""
    producer = graph.producers().get(name)
    return producer is not None and (producer.act in ("relu", "relu6") or producer.op in ("relu", "relu6"))


def _pad_with_lowest(b: TflBuilder, node: Node) -> int:
    """PADV2 with the lowest value of the input's type (int8 level -128, which no real value
    exceeds from below): a max pool over it ignores the padding, as PyTorch's does, for the
    pads (a ResNet stem's 3x3/2 with padding 1) that TF SAME cannot express."""
    x = b.read(node.inputs[0])
    top, left, bottom, right = node.attrs["pads"]
    source = b.model.tensors[x]
    n, h, w, c = source.shape
    padded = b.like(f"{node.name}_padded", [n, h + top + bottom, w + left + right, c], x)
    widths = b.const(f"{node.name}_pads", np.asarray([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32), tflite.TensorType.INT32)
    if source.dtype in (tflite.TensorType.INT8, tflite.TensorType.INT16):
        dtype = np.int8 if source.dtype == tflite.TensorType.INT8 else np.int16
        lowest = b.const(f"{node.name}_lowest", np.asarray([np.iinfo(dtype).min], dtype), source.dtype, source.quant)
    else:
        lowest = b.const(f"{node.name}_lowest", np.asarray([np.finfo(np.float32).min], np.float32), source.dtype)
    b.op(Op.PADV2, [x, widths, lowest], [padded])
    return padded


def _weights(b: TflBuilder, name: str, laid_out: Callable[[np.ndarray], np.ndarray], dimension: int) -> int:
    """A layer's weight tensor, written once however many layers read it."""
    tensor = b.graph.tensors[name]
    assert tensor.data is not None
    stored = tflite.TensorType.INT8 if b.quantized and tensor.quant is not None else tflite.TensorType.FLOAT32
    if (name, stored) in b.weights:
        return b.weights[(name, stored)]
    if stored == tflite.TensorType.INT8:
        levels = laid_out(quantize_array(tensor.int8_source, tensor.quant))  # type: ignore[arg-type]
        index = b.const(name, levels, stored, quant_spec(tensor.quant, dimension))  # type: ignore[arg-type]
    else:
        index = b.const(name, laid_out(tensor.data).astype(np.float32), stored)
    b.weights[(name, stored)] = index
    return index


def _bias(b: TflBuilder, node: Node) -> int:
    if len(node.inputs) < 3:
        return -1
    tensor = b.graph.tensors[node.inputs[2]]
    assert tensor.data is not None
    if b.quantized and tensor.quant is not None:
        levels = quantize_array(tensor.int8_source, tensor.quant)  # type: ignore[arg-type]
        dtype = tflite.TensorType.INT64 if tensor.quant.dtype == "int64" else tflite.TensorType.INT32  # int64: a 16x8 layer
        return b.const(tensor.name, levels, dtype, quant_spec(tensor.quant))
    return b.const(tensor.name, tensor.data.astype(np.float32), tflite.TensorType.FLOAT32)


class _FloatIsland:
    """A layer kept in float inside an int8 model: DEQUANTIZE its input, run the float
    operator, QUANTIZE its output back onto the int8 tensor the next layer reads."""

    def __init__(self, b: TflBuilder, node: Node) -> None:
        self.b, self.node = b, node
        self.active = b.quantized and node.in_float
        self.version = b.version if not self.active else (lambda code: VERSIONS[code][0])

    def input(self, x: int) -> int:
        source = self.b.model.tensors[x]
        if not self.active or source.dtype == tflite.TensorType.FLOAT32:
            return x
        floating = self.b.model.add_tensor(TflTensor(f"{self.node.name}_float_input", source.shape, tflite.TensorType.FLOAT32))
        self.b.op(Op.DEQUANTIZE, [x], [floating])
        return floating

    def output(self) -> int:
        out = self.b.define(self.node.outputs[0])
        if not self.active or self.b.model.tensors[out].dtype == tflite.TensorType.FLOAT32:
            self.active = False  # the next layer reads this float tensor as it is
            return out
        target = self.b.model.tensors[out]
        self.result = out
        return self.b.model.add_tensor(TflTensor(f"{self.node.name}_float_output", target.shape, tflite.TensorType.FLOAT32))

    def finish(self, floating_out: int) -> None:
        if self.active:
            self.b.op(Op.QUANTIZE, [floating_out], [self.result])


class _Int16Island:
    """A layer the fallback gave int16 activations (TFLite's 16x8 kernels). It reads and
    writes int16 tensors; at an int8 neighbour it converts: an int8 input goes through float
    (DEQUANTIZE, then QUANTIZE onto int16 with the int8 scale and zero point 0, which is
    exact), and the output is written in int16 and requantized onto the int8 tensor."""

    def __init__(self, b: TflBuilder, node: Node) -> None:
        self.b, self.node = b, node
        self.result = -1
        b.require_runtime("2.3.0")  # when the 16x8 operator versions arrived

    def version(self, code: int) -> int:
        return INT16_VERSIONS[code]

    def input(self, x: int) -> int:
        source = self.b.model.tensors[x]
        if source.dtype == tflite.TensorType.INT16:
            return x
        assert source.quant is not None
        floating = self.b.model.add_tensor(TflTensor(f"{self.node.name}_float_input", source.shape, tflite.TensorType.FLOAT32))
        self.b.op(Op.DEQUANTIZE, [x], [floating])
        wide = self.b.model.add_tensor(
            TflTensor(f"{self.node.name}_int16_input", source.shape, tflite.TensorType.INT16, quant=QuantSpec([source.quant.scale[0]], [0]))
        )
        self.b.op(Op.QUANTIZE, [floating], [wide], version=VERSIONS_INT16_QUANTIZE)
        return wide

    def output(self) -> int:
        out = self.b.define(self.node.outputs[0])
        target = self.b.model.tensors[out]
        if target.dtype == tflite.TensorType.INT16:
            return out
        self.result = out
        q = self.b.graph.tensors[self.node.outputs[0]].quant
        assert q is not None
        wide = int16_params(q)
        return self.b.model.add_tensor(
            TflTensor(f"{self.node.name}_int16_output", target.shape, tflite.TensorType.INT16, quant=quant_spec(wide))
        )

    def finish(self, wide_out: int) -> None:
        if self.result >= 0:
            self.b.op(Op.QUANTIZE, [wide_out], [self.result], version=1)


def _island(b: TflBuilder, node: Node) -> _FloatIsland | _Int16Island:
    """How a weighted layer sits in the model: int8 (a no-op island), float, or 16x8."""
    if b.quantized and node.attrs.get("precision") == "int16":
        return _Int16Island(b, node)
    return _FloatIsland(b, node)


@tfl_op("conv2d")
def conv2d(b: TflBuilder, node: Node) -> None:
    kernel = list(b.graph.tensors[node.inputs[1]].shape[2:])
    stride, dilation, act = node.attrs["stride"], node.attrs["dilation"], ACTIVATIONS[node.act]
    island = _island(b, node)
    x, padding = _padded_input(b, node, kernel, dilation)
    x = island.input(x)
    depthwise = depthwise_multiplier(b.graph, node) > 0
    if depthwise:
        weight = _weights(b, node.inputs[1], layout.depthwise_weight, 3)
    else:
        weight = _weights(b, node.inputs[1], layout.conv_weight, 0)
    inputs = [x, weight, _bias(b, node)]
    out = island.output()
    if depthwise:
        multiplier = b.graph.tensors[node.inputs[1]].shape[0] // b.graph.tensors[node.inputs[0]].shape[1]

        def depthwise_options(fb: flatbuffers.Builder) -> int:
            tflite.DepthwiseConv2DOptionsStart(fb)
            tflite.DepthwiseConv2DOptionsAddPadding(fb, padding)
            tflite.DepthwiseConv2DOptionsAddStrideW(fb, stride[1])
            tflite.DepthwiseConv2DOptionsAddStrideH(fb, stride[0])
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(fb, multiplier)
            tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(fb, act)
            tflite.DepthwiseConv2DOptionsAddDilationWFactor(fb, dilation[1])
            tflite.DepthwiseConv2DOptionsAddDilationHFactor(fb, dilation[0])
            return int(tflite.DepthwiseConv2DOptionsEnd(fb))

        b.op(Op.DEPTHWISE_CONV_2D, inputs, [out], Options.DepthwiseConv2DOptions, depthwise_options, island.version(Op.DEPTHWISE_CONV_2D))
        island.finish(out)
        return

    def conv_options(fb: flatbuffers.Builder) -> int:
        tflite.Conv2DOptionsStart(fb)
        tflite.Conv2DOptionsAddPadding(fb, padding)
        tflite.Conv2DOptionsAddStrideW(fb, stride[1])
        tflite.Conv2DOptionsAddStrideH(fb, stride[0])
        tflite.Conv2DOptionsAddFusedActivationFunction(fb, act)
        tflite.Conv2DOptionsAddDilationWFactor(fb, dilation[1])
        tflite.Conv2DOptionsAddDilationHFactor(fb, dilation[0])
        return int(tflite.Conv2DOptionsEnd(fb))

    version = island.version(Op.CONV_2D)
    if node.attrs["groups"] > 1:  # a grouped filter [O, kh, kw, I / groups]: op_version.cc gives it version 6
        version = max(version, GROUPED_CONV_VERSION)
        b.require_runtime("2.9.0")
    b.op(Op.CONV_2D, inputs, [out], Options.Conv2DOptions, conv_options, version)
    island.finish(out)


@tfl_op("linear")
def linear(b: TflBuilder, node: Node) -> None:
    island = _island(b, node)
    inputs = [island.input(b.read(node.inputs[0])), _weights(b, node.inputs[1], lambda w: w, 0), _bias(b, node)]
    act = ACTIVATIONS[node.act]

    steps = len(b.graph.tensors[node.inputs[0]].shape) > 2  # [batch, steps, features]: the steps stay

    def options(fb: flatbuffers.Builder) -> int:
        tflite.FullyConnectedOptionsStart(fb)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(fb, act)
        if steps:
            tflite.FullyConnectedOptionsAddKeepNumDims(fb, True)
        return int(tflite.FullyConnectedOptionsEnd(fb))

    out = island.output()
    version = island.version(Op.FULLY_CONNECTED)
    if steps:  # op_version.cc: keep_num_dims is version 5 (TFLite 2.2)
        version = max(version, 5)
        b.require_runtime("2.2.0")
    b.op(Op.FULLY_CONNECTED, inputs, [out], Options.FullyConnectedOptions, options, version)
    island.finish(out)


_ELEMENTWISE = {
    "add": (Op.ADD, Options.AddOptions, tflite.AddOptionsStart, tflite.AddOptionsAddFusedActivationFunction, tflite.AddOptionsEnd),
    "sub": (Op.SUB, Options.SubOptions, tflite.SubOptionsStart, tflite.SubOptionsAddFusedActivationFunction, tflite.SubOptionsEnd),
    "mul": (Op.MUL, Options.MulOptions, tflite.MulOptionsStart, tflite.MulOptionsAddFusedActivationFunction, tflite.MulOptionsEnd),
    # float only: the stream runs a division in float (quantize/stream.py)
    "div": (Op.DIV, Options.DivOptions, tflite.DivOptionsStart, tflite.DivOptionsAddFusedActivationFunction, tflite.DivOptionsEnd),
}


@tfl_op("add", "sub", "mul", "div")
def elementwise(b: TflBuilder, node: Node) -> None:
    code, options_type, start, add_act, end = _ELEMENTWISE[node.op]
    if node.attrs.get("integer"):  # integers (position ids): int32 constants, no quantization
        inputs = [_integer(b, name) for name in node.inputs]
        b.op(code, inputs, [b.define(node.outputs[0])], version=1)
        return
    inputs = [b.read(name, b.nhwc(node.outputs[0])) for name in node.inputs]
    out = b.define(node.outputs[0])
    act = ACTIVATIONS[node.act]

    def options(fb: flatbuffers.Builder) -> int:
        start(fb)
        add_act(fb, act)
        return int(end(fb))

    version = None
    if node.op == "mul" and b.quantized:
        # op_version.cc: int8 MUL whose input scales' product reaches the output scale is version 3.
        scales = [b.model.tensors[i].quant.scale[0] for i in (*inputs, out)]  # type: ignore[union-attr]
        version = 3 if scales[0] * scales[1] / scales[2] >= 1.0 else 2
    b.op(code, inputs, [out], options_type, options, version)


def _integer(b: TflBuilder, name: str) -> int:
    tensor = b.graph.tensors[name]
    if tensor.data is None:
        return b.read(name)
    return b.const(f"{name}_int32", np.round(tensor.data).astype(np.int32).reshape(tensor.data.shape), tflite.TensorType.INT32)


def _no_options(code: int) -> TflOp:
    def write(b: TflBuilder, node: Node) -> None:
        b.op(code, [b.read(node.inputs[0])], [b.define(node.outputs[0])])

    return write


tfl_op("relu")(_no_options(Op.RELU))
tfl_op("relu6")(_no_options(Op.RELU6))
tfl_op("sigmoid")(_no_options(Op.LOGISTIC))
tfl_op("tanh")(_no_options(Op.TANH))
tfl_op("hardswish")(_no_options(Op.HARD_SWISH))


@tfl_op("prelu")
def prelu(b: TflBuilder, node: Node) -> None:
    """PRELU: the slope an int8 constant with its own scale, broadcast over NHWC's last axis."""
    b.op(Op.PRELU, [b.read(node.inputs[0]), b.read(node.inputs[1], b.nhwc(node.inputs[0]))], [b.define(node.outputs[0])])


def _unary_with_options(code: int, options_type: int, write: Callable[[flatbuffers.Builder, Node], int]) -> TflOp:
    """A one-input op whose options table ``write`` fills from the node's attributes."""

    def op(b: TflBuilder, node: Node) -> None:
        b.op(code, [b.read(node.inputs[0])], [b.define(node.outputs[0])], options_type, lambda fb: write(fb, node))

    return op


def _leaky_relu_options(fb: flatbuffers.Builder, node: Node) -> int:
    tflite.LeakyReluOptionsStart(fb)
    tflite.LeakyReluOptionsAddAlpha(fb, float(node.attrs["alpha"]))
    return int(tflite.LeakyReluOptionsEnd(fb))


def _gelu_options(fb: flatbuffers.Builder, node: Node) -> int:
    tflite.GeluOptionsStart(fb)
    tflite.GeluOptionsAddApproximate(fb, bool(node.attrs.get("approximate")))
    return int(tflite.GeluOptionsEnd(fb))


tfl_op("leaky_relu")(_unary_with_options(Op.LEAKY_RELU, tflite.BuiltinOptions.LeakyReluOptions, _leaky_relu_options))
tfl_op("gelu")(_unary_with_options(Op.GELU, tflite.BuiltinOptions.GeluOptions, _gelu_options))


@tfl_op("softmax")
def softmax(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.SoftmaxOptionsStart(fb)
        tflite.SoftmaxOptionsAddBeta(fb, 1.0)
        return int(tflite.SoftmaxOptionsEnd(fb))

    b.op(Op.SOFTMAX, [b.read(node.inputs[0])], [b.define(node.outputs[0])], Options.SoftmaxOptions, options)


@tfl_op("log_softmax")
def log_softmax(b: TflBuilder, node: Node) -> None:
    """LOG_SOFTMAX: int8 output on the fixed grid (scale 16/256, zero point 127)."""

    def options(fb: flatbuffers.Builder) -> int:
        tflite.LogSoftmaxOptionsStart(fb)
        return int(tflite.LogSoftmaxOptionsEnd(fb))

    b.op(Op.LOG_SOFTMAX, [b.read(node.inputs[0])], [b.define(node.outputs[0])], Options.LogSoftmaxOptions, options)


def _mean(b: TflBuilder, node: Node, axes: list[int], keep: bool) -> None:
    axes_tensor = b.int32_const(f"{node.name}_axes", axes)

    def options(fb: flatbuffers.Builder) -> int:
        tflite.ReducerOptionsStart(fb)
        tflite.ReducerOptionsAddKeepDims(fb, keep)
        return int(tflite.ReducerOptionsEnd(fb))

    b.op(Op.MEAN, [b.read(node.inputs[0]), axes_tensor], [b.define(node.outputs[0])], Options.ReducerOptions, options)


@tfl_op("global_avgpool")
def global_avgpool(b: TflBuilder, node: Node) -> None:
    _mean(b, node, [1, 2], True)


@tfl_op("mean")
def mean(b: TflBuilder, node: Node) -> None:
    rank = len(b.graph.tensors[node.inputs[0]].shape) if b.nhwc(node.inputs[0]) else 0  # rank 0: axes as they are
    _mean(b, node, sorted(layout.nhwc_axis(a, rank) for a in node.attrs["axes"]), bool(node.attrs["keepdim"]))


@tfl_op("avgpool2d", "maxpool2d")
def pool2d(b: TflBuilder, node: Node) -> None:
    kernel, stride = node.attrs["kernel"], node.attrs["stride"]
    if node.op == "avgpool2d":
        # TF's SAME average excludes the padding from the count; PyTorch's default includes
        # it, which an explicit zero PAD reproduces.
        x, padding = b.read(node.inputs[0]), int(tflite.Padding.VALID)
        if any(node.attrs["pads"]):
            x, padding = _pad_explicitly(b, node)
    elif _same_or_none(b.graph, node, kernel, [1, 1]) is None:
        x, padding = (
            _pad_explicitly(b, node) if _nonnegative(b.graph, node.inputs[0]) else (_pad_with_lowest(b, node), int(tflite.Padding.VALID))
        )
    else:
        x, padding = _padded_input(b, node, kernel, [1, 1])

    def options(fb: flatbuffers.Builder) -> int:
        tflite.Pool2DOptionsStart(fb)
        tflite.Pool2DOptionsAddPadding(fb, padding)
        tflite.Pool2DOptionsAddStrideW(fb, stride[1])
        tflite.Pool2DOptionsAddStrideH(fb, stride[0])
        tflite.Pool2DOptionsAddFilterWidth(fb, kernel[1])
        tflite.Pool2DOptionsAddFilterHeight(fb, kernel[0])
        return int(tflite.Pool2DOptionsEnd(fb))

    code = Op.AVERAGE_POOL_2D if node.op == "avgpool2d" else Op.MAX_POOL_2D
    b.op(code, [x], [b.define(node.outputs[0])], Options.Pool2DOptions, options)


def _transpose(b: TflBuilder, x: int, perm: list[int], name: str) -> int:
    shape = b.model.tensors[x].shape
    out = b.like(name, [shape[p] for p in perm], x)
    b.op(Op.TRANSPOSE, [x, b.int32_const(f"{name}_perm", perm)], [out])
    return out


def _reshape_op(b: TflBuilder, x: int, out_shape: list[int], out: int, name: str) -> None:
    shape = [-1, *out_shape[1:]]  # the batch axis stays free, so the interpreter can resize it

    def options(fb: flatbuffers.Builder) -> int:
        tflite.ReshapeOptionsStartNewShapeVector(fb, len(shape))
        for dim in reversed(shape):
            fb.PrependInt32(dim)
        new_shape = fb.EndVector()
        tflite.ReshapeOptionsStart(fb)
        tflite.ReshapeOptionsAddNewShape(fb, new_shape)
        return int(tflite.ReshapeOptionsEnd(fb))

    b.op(Op.RESHAPE, [x, b.int32_const(f"{name}_shape", shape)], [out], Options.ReshapeOptions, options)


@tfl_op("reshape")
def reshape(b: TflBuilder, node: Node) -> None:
    """Reshape in the IR's NCHW order: transpose to NCHW first and back after, unless no byte moves."""
    x = b.read(node.inputs[0])
    out_shape = list(b.graph.tensors[node.outputs[0]].shape)
    if b.nhwc(node.inputs[0]) and not layout.is_memory_noop(b.model.tensors[x].shape, list(layout.NHWC_TO_NCHW)):
        x = _transpose(b, x, list(layout.NHWC_TO_NCHW), f"{node.name}_to_nchw")
    out = b.define(node.outputs[0])
    if b.nhwc(node.outputs[0]) and not layout.is_memory_noop(out_shape, list(layout.NCHW_TO_NHWC)):
        nchw = b.like(f"{node.name}_nchw", out_shape, out)
        _reshape_op(b, x, out_shape, nchw, node.name)
        b.op(Op.TRANSPOSE, [nchw, b.int32_const(f"{node.name}_perm", list(layout.NCHW_TO_NHWC))], [out])
        return
    _reshape_op(b, x, b.model.tensors[out].shape, out, node.name)


@tfl_op("transpose")
def transpose(b: TflBuilder, node: Node) -> None:
    perm = list(node.attrs["perm"])
    if len(perm) == 4:
        perm = layout.transpose_perm(perm, b.nhwc(node.inputs[0]), b.nhwc(node.outputs[0]))
    x = b.read(node.inputs[0])
    version = None
    if len(perm) > 4:  # a channel shuffle's 5-D transpose: op_version.cc gives version 4 (TFLite 2.3)
        version = max(b.version(Op.TRANSPOSE), 4)
        b.require_runtime("2.3.0")
    b.op(Op.TRANSPOSE, [x, b.int32_const(f"{node.name}_perm", perm)], [b.define(node.outputs[0])], version=version)


@tfl_op("pad")
def pad(b: TflBuilder, node: Node) -> None:
    pairs = node.attrs["pads"]
    if b.nhwc(node.inputs[0]):
        pairs = [pairs[i] for i in layout.NCHW_TO_NHWC]
    widths = b.const(f"{node.name}_pads", np.asarray(pairs, np.int32), tflite.TensorType.INT32)
    b.op(Op.PAD, [b.read(node.inputs[0]), widths], [b.define(node.outputs[0])])


@tfl_op("resize")
def resize(b: TflBuilder, node: Node) -> None:
    """RESIZE_NEAREST_NEIGHBOR (no half-pixel centres: floor of out * in / out, as PyTorch's
    nearest) or RESIZE_BILINEAR (half-pixel centres, or aligned corners)."""
    nearest = node.attrs["mode"] == "nearest"
    align, half_pixel = bool(node.attrs["align_corners"]), not nearest and not node.attrs["align_corners"]

    def options(fb: flatbuffers.Builder) -> int:
        if nearest:
            tflite.ResizeNearestNeighborOptionsStart(fb)
            tflite.ResizeNearestNeighborOptionsAddAlignCorners(fb, align)
            return int(tflite.ResizeNearestNeighborOptionsEnd(fb))
        tflite.ResizeBilinearOptionsStart(fb)
        tflite.ResizeBilinearOptionsAddAlignCorners(fb, align)
        tflite.ResizeBilinearOptionsAddHalfPixelCenters(fb, half_pixel)
        return int(tflite.ResizeBilinearOptionsEnd(fb))

    code = Op.RESIZE_NEAREST_NEIGHBOR if nearest else Op.RESIZE_BILINEAR
    kind = Options.ResizeNearestNeighborOptions if nearest else Options.ResizeBilinearOptions
    size = b.int32_const(f"{node.name}_size", list(node.attrs["size"]))
    version = 3 if half_pixel else None  # op_version.cc: half-pixel centres take version 3
    b.op(code, [b.read(node.inputs[0]), size], [b.define(node.outputs[0])], kind, options, version)


@tfl_op("slice")
def slice_(b: TflBuilder, node: Node) -> None:
    """STRIDED_SLICE of one axis (SLICE would fix the batch axis at one: its constant size
    does not follow a resized input)."""
    shape = list(b.graph.tensors[node.inputs[0]].shape)
    rank, a = len(shape), node.attrs
    axis = layout.nhwc_axis(a["axis"], rank) if b.nhwc(node.inputs[0]) else a["axis"]
    begin, end, strides = [0] * rank, b.shape(node.inputs[0]), [1] * rank
    begin[axis], end[axis], strides[axis] = a["start"], a["end"], a["step"]

    def options(fb: flatbuffers.Builder) -> int:
        tflite.StridedSliceOptionsStart(fb)
        tflite.StridedSliceOptionsAddEndMask(fb, 1)  # the batch axis runs to its end
        return int(tflite.StridedSliceOptionsEnd(fb))

    consts = [b.int32_const(f"{node.name}_{part}", values) for part, values in (("begin", begin), ("end", end), ("strides", strides))]
    b.op(Op.STRIDED_SLICE, [b.read(node.inputs[0]), *consts], [b.define(node.outputs[0])], Options.StridedSliceOptions, options)


@tfl_op("concat")
def concat(b: TflBuilder, node: Node) -> None:
    rank = len(b.graph.tensors[node.outputs[0]].shape)
    axis = layout.nhwc_axis(node.attrs["axis"], rank) if b.nhwc(node.outputs[0]) else node.attrs["axis"]

    def options(fb: flatbuffers.Builder) -> int:
        tflite.ConcatenationOptionsStart(fb)
        tflite.ConcatenationOptionsAddAxis(fb, axis)
        return int(tflite.ConcatenationOptionsEnd(fb))

    b.op(Op.CONCATENATION, [b.read(n) for n in node.inputs], [b.define(node.outputs[0])], Options.ConcatenationOptions, options)
