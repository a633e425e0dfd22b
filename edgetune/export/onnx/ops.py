"""IR op -> ONNX nodes, one function per op family.

Each function reads its inputs through ``b.read`` (float values, dequantized in the int8
model) and returns the float ONNX value of its output, which the writer publishes
(quantize-dequantize in the int8 model). A fused ReLU/ReLU6 is written as its own node
in the float model only: in the int8 model the output's quantization range starts at 0
(zero point -128) and ends at most at 6, so QuantizeLinear's saturation applies it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto

from edgetune.export.onnx.builder import OnnxBuilder
from edgetune.ir.graph import Node
from edgetune.registry import Registry

OnnxOp = Callable[[OnnxBuilder, Node], str]
ONNX_OPS: Registry[OnnxOp] = Registry("ONNX writer")
onnx_op = ONNX_OPS.register


def _activation(b: OnnxBuilder, value: str, node: Node) -> str:
    """The fused activation. In an int8 model the output's QuantizeLinear saturates at the
    range ends (0, and at most 6 for ReLU6), which is the activation itself; only a float
    output (between two layers kept in float) or a symmetric int16 one needs the operator."""
    act = node.act
    q = b.graph.tensors[node.outputs[0]].quant
    # An int8 output's range starts at 0; a symmetric int16 one (the 16x8 fallback) does not.
    if act == "none" or (b.quantized and q is not None and q.dtype == "int8"):
        return value
    if act == "relu":
        return b.node("Relu", [value])[0]
    return _clip(b, value, 0.0, 6.0)


def _clip(b: OnnxBuilder, value: str, low: float | None, high: float | None) -> str:
    bounds = [b.initializer("clip_min", np.float32(low)) if low is not None else ""]
    bounds.append(b.initializer("clip_max", np.float32(high)) if high is not None else "")
    while bounds and not bounds[-1]:
        bounds.pop()
    return b.node("Clip", [value, *bounds])[0]


def _layer_inputs(b: OnnxBuilder, node: Node) -> list[str]:
    first = b.read_for_float_layer(node.inputs[0]) if node.in_float else b.read(node.inputs[0])
    return [first, *(b.read(name) for name in node.inputs[1:])]


@onnx_op("conv2d")
def conv2d(b: OnnxBuilder, node: Node) -> str:
    weight = b.graph.tensors[node.inputs[1]]
    out = b.node(
        "Conv",
        _layer_inputs(b, node),
        kernel_shape=list(weight.shape[2:]),
        strides=node.attrs["stride"],
        pads=node.attrs["pads"],
        dilations=node.attrs["dilation"],
        group=node.attrs["groups"],
    )[0]
    return _activation(b, out, node)


@onnx_op("conv_transpose2d")
def conv_transpose2d(b: OnnxBuilder, node: Node) -> str:
    weight = b.graph.tensors[node.inputs[1]]
    first = b.read_for_float_layer(node.inputs[0]) if node.in_float else b.read(node.inputs[0])
    inputs = [first, b.read_swapped_weight(node.inputs[1]), *(b.read(name) for name in node.inputs[2:])]
    out = b.node(
        "ConvTranspose",
        inputs,
        kernel_shape=list(weight.shape[2:]),
        strides=node.attrs["stride"],
        pads=node.attrs["pads"],
        output_padding=node.attrs["output_padding"],
    )[0]
    return _activation(b, out, node)


@onnx_op("linear")
def linear(b: OnnxBuilder, node: Node) -> str:
    """Gemm; over [batch, steps, features], between two Reshapes (Gemm takes matrices), which
    ONNX Runtime's QDQ propagation moves out of the way of the integer QGemm."""
    shape = b.graph.tensors[node.inputs[0]].shape
    inputs = _layer_inputs(b, node)
    if len(shape) == 2:
        return _activation(b, b.node("Gemm", inputs, transB=1)[0], node)
    rows = b.node("Reshape", [inputs[0], b.initializer(f"{node.name}_rows", np.asarray([-1, shape[-1]], np.int64))])[0]
    out = b.node("Gemm", [rows, *inputs[1:]], transB=1)[0]
    out_shape = np.asarray([-1, *b.graph.tensors[node.outputs[0]].shape[1:]], np.int64)
    return _activation(b, b.node("Reshape", [out, b.initializer(f"{node.name}_shape", out_shape)])[0], node)


@onnx_op("matmul")
def matmul(b: OnnxBuilder, node: Node) -> str:
    return b.node("MatMul", [b.read(node.inputs[0]), b.read(node.inputs[1])])[0]


@onnx_op("group_norm")
def group_norm(b: OnnxBuilder, node: Node) -> str:
    """Opset 17 has no GroupNormalization: the channels reshaped into [N, groups, rest],
    InstanceNormalization with unit scale, reshaped back, then the per-channel scale and shift.
    In float between DequantizeLinear and QuantizeLinear."""
    shape = list(b.graph.tensors[node.inputs[0]].shape)
    groups = node.attrs["groups"]
    grouped = b.node("Reshape", [b.read(node.inputs[0]), b.initializer(f"{node.name}_groups", np.asarray([0, groups, -1], np.int64))])[0]
    ones, zeros = (
        b.initializer(f"{node.name}_{part}", np.full(groups, value, np.float32)) for part, value in (("one", 1.0), ("zero", 0.0))
    )
    normalized = b.node("InstanceNormalization", [grouped, ones, zeros], epsilon=node.attrs["eps"])[0]
    restored = b.node("Reshape", [normalized, b.initializer(f"{node.name}_shape", np.asarray([-1, *shape[1:]], np.int64))])[0]
    gamma = b.initializer(f"{node.name}_gamma", b.graph.const(node.inputs[1]).reshape(-1, 1, 1).astype(np.float32))
    beta = b.initializer(f"{node.name}_beta", b.graph.const(node.inputs[2]).reshape(-1, 1, 1).astype(np.float32))
    return b.node("Add", [b.node("Mul", [restored, gamma])[0], beta])[0]


@onnx_op("layer_norm")
def layer_norm(b: OnnxBuilder, node: Node) -> str:
    """LayerNormalization (opset 17) in float between DequantizeLinear and QuantizeLinear."""
    inputs = [b.read(name) for name in node.inputs]
    return b.node("LayerNormalization", inputs, axis=-1, epsilon=node.attrs["eps"])[0]


@onnx_op("add", "sub", "mul", "div")
def elementwise(b: OnnxBuilder, node: Node) -> str:
    op_type = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[node.op]
    if node.attrs.get("integer"):  # integers (position ids): int64 constants
        inputs = [_integer(b, name) for name in node.inputs]
        return b.node(op_type, inputs)[0]
    out = b.node(op_type, [b.read(name) for name in node.inputs])[0]
    return _activation(b, out, node)


def _integer(b: OnnxBuilder, name: str) -> str:
    tensor = b.graph.tensors[name]
    if tensor.data is None:
        return b.read(name)
    return b.initializer(f"{name}_int64", np.round(tensor.data).astype(np.int64))


@onnx_op("relu")
def relu(b: OnnxBuilder, node: Node) -> str:
    return b.node("Relu", [b.read(node.inputs[0])])[0]


@onnx_op("relu6")
def relu6(b: OnnxBuilder, node: Node) -> str:
    return _clip(b, b.read(node.inputs[0]), 0.0, 6.0)


@onnx_op("clamp")
def clamp(b: OnnxBuilder, node: Node) -> str:
    return _clip(b, b.read(node.inputs[0]), node.attrs.get("min"), node.attrs.get("max"))


@onnx_op("sigmoid", "tanh", "hardswish")
def unary(b: OnnxBuilder, node: Node) -> str:
    op_type = {"sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}[node.op]
    return b.node(op_type, [b.read(node.inputs[0])])[0]


@onnx_op("leaky_relu")
def leaky_relu(b: OnnxBuilder, node: Node) -> str:
    return b.node("LeakyRelu", [b.read(node.inputs[0])], alpha=node.attrs["alpha"])[0]


@onnx_op("prelu")
def prelu(b: OnnxBuilder, node: Node) -> str:
    """PRelu with the slope shaped to broadcast (C, 1, 1); in float between DQ and Q, which
    ONNX Runtime keeps (it has no integer PRelu)."""
    return b.node("PRelu", [b.read(node.inputs[0]), b.read(node.inputs[1])])[0]


@onnx_op("gelu")
def gelu(b: OnnxBuilder, node: Node) -> str:
    """GELU in float between the input's dequantization and the output's quantization (opset
    17 has no Gelu): 0.5 x (1 + erf(x / sqrt 2)), or the tanh form. TFLite's int8 GELU is a
    table of the same function on the input's grid, so the two agree to rounding."""
    x = b.read(node.inputs[0])
    if node.attrs.get("approximate"):
        cube = b.node("Mul", [x, b.node("Mul", [x, x])[0]])[0]
        inner = b.node("Add", [x, b.node("Mul", [cube, b.initializer("gelu_cubic", np.float32(0.044715))])[0]])[0]
        curve = b.node("Tanh", [b.node("Mul", [inner, b.initializer("gelu_scale", np.float32(np.sqrt(2 / np.pi)))])[0]])[0]
    else:
        # x / sqrt 2 (not x times its reciprocal): the form ONNX Runtime's GeluFusion recognises
        curve = b.node("Erf", [b.node("Div", [x, b.initializer("gelu_root2", np.float32(np.sqrt(2)))])[0]])[0]
    one_plus = b.node("Add", [curve, b.initializer("gelu_one", np.float32(1.0))])[0]
    return b.node("Mul", [b.node("Mul", [x, one_plus])[0], b.initializer("gelu_half", np.float32(0.5))])[0]


@onnx_op("softmax")
def softmax(b: OnnxBuilder, node: Node) -> str:
    return b.node("Softmax", [b.read(node.inputs[0])], axis=node.attrs["axis"])[0]


@onnx_op("elu", "softplus", "mish")
def float_activation(b: OnnxBuilder, node: Node) -> str:
    """In float between DequantizeLinear and QuantizeLinear (ONNX Runtime has no integer kernel
    for them): Elu, Softplus, and Mish as x * tanh(softplus(x)) (Mish arrived in opset 18)."""
    x = b.read(node.inputs[0])
    if node.op == "elu":
        return b.node("Elu", [x], alpha=node.attrs["alpha"])[0]
    soft = b.node("Softplus", [x])[0]
    return soft if node.op == "softplus" else b.node("Mul", [x, b.node("Tanh", [soft])[0]])[0]


@onnx_op("depth_to_space")
def depth_to_space(b: OnnxBuilder, node: Node) -> str:
    """DepthToSpace in CRD order: PyTorch's pixel_shuffle."""
    return b.node("DepthToSpace", [b.read(node.inputs[0])], blocksize=node.attrs["block"], mode="CRD")[0]


@onnx_op("l2_normalize")
def l2_normalize(b: OnnxBuilder, node: Node) -> str:
    """x / max(||x||, eps) over the axis, in float between DequantizeLinear and QuantizeLinear."""
    x = b.read(node.inputs[0])
    norm = b.node("ReduceL2", [x], axes=[node.attrs["axis"]], keepdims=1)[0]
    floor = b.node("Max", [norm, b.initializer(f"{node.name}_eps", np.float32(node.attrs["eps"]))])[0]
    return b.node("Div", [x, floor])[0]


@onnx_op("log_softmax")
def log_softmax(b: OnnxBuilder, node: Node) -> str:
    """In float between DequantizeLinear and QuantizeLinear, onto TFLite's fixed grid (16/256, 127)."""
    return b.node("LogSoftmax", [b.read(node.inputs[0])], axis=node.attrs["axis"])[0]


@onnx_op("global_avgpool")
def global_avgpool(b: OnnxBuilder, node: Node) -> str:
    return b.node("GlobalAveragePool", [b.read(node.inputs[0])])[0]


@onnx_op("avgpool2d", "maxpool2d")
def pool2d(b: OnnxBuilder, node: Node) -> str:
    attrs: dict[str, Any] = {"kernel_shape": node.attrs["kernel"], "strides": node.attrs["stride"], "pads": node.attrs["pads"]}
    if node.op == "avgpool2d":
        attrs["count_include_pad"] = 1
    return b.node("AveragePool" if node.op == "avgpool2d" else "MaxPool", [b.read(node.inputs[0])], **attrs)[0]


@onnx_op("mean")
def mean(b: OnnxBuilder, node: Node) -> str:
    keepdims = int(node.attrs["keepdim"])
    if b.opset >= 18:  # the axes became an input in opset 18
        axes = b.initializer("axes", np.asarray(node.attrs["axes"], dtype=np.int64))
        return b.node("ReduceMean", [b.read(node.inputs[0]), axes], keepdims=keepdims)[0]
    return b.node("ReduceMean", [b.read(node.inputs[0])], axes=node.attrs["axes"], keepdims=keepdims)[0]


@onnx_op("gather")
def gather(b: OnnxBuilder, node: Node) -> str:
    """Rows of the table at the ids. Quantized, the table is an int8 initializer whose
    DequantizeLinear, the Gather and the output's QuantizeLinear (with the table's parameters)
    ONNX Runtime runs as one int8 Gather."""
    return b.node("Gather", [b.read(node.inputs[1]), b.read(node.inputs[0])], axis=0)[0]


@onnx_op("cast")
def cast(b: OnnxBuilder, node: Node) -> str:
    """Integer values (an attention mask) as float; float in the int8 model too (quantize/stream.py)."""
    return b.node("Cast", [b.read(node.inputs[0])], to=TensorProto.FLOAT)[0]


@onnx_op("compare")
def compare(b: OnnxBuilder, node: Node) -> str:
    """Equal (Not for ``!=``) with the value in the input's type, cast to int64 0/1 (a mask)."""
    integer = b.graph.tensors[node.inputs[0]].is_integer
    value = np.asarray(node.attrs["value"], np.int64 if integer else np.float32)
    equal = b.node("Equal", [b.read(node.inputs[0]), b.initializer(f"{node.name}_value", value)])[0]
    if node.attrs["test"] == "ne":
        equal = b.node("Not", [equal])[0]
    return b.node("Cast", [equal], to=TensorProto.INT64)[0]


@onnx_op("cumsum")
def cumsum(b: OnnxBuilder, node: Node) -> str:
    return b.node("CumSum", [b.read(node.inputs[0]), b.initializer(f"{node.name}_axis", np.asarray(node.attrs["axis"], np.int64))])[0]


@onnx_op("expand")
def expand(b: OnnxBuilder, node: Node) -> str:
    """Expand to the shape, the batch taken from the input (an attention mask over the scores)."""
    shape = b.initializer(f"{node.name}_shape", np.asarray([1, *node.attrs["shape"]], np.int64))
    return b.node("Expand", [b.read(node.inputs[0]), shape])[0]


@onnx_op("channels")
def channels(b: OnnxBuilder, node: Node) -> str:
    """Channels of the last axis scaled (Mul), and copies of some appended (Gather of those
    alone and Concat: a Gather of the whole tensor on its last axis costs ONNX Runtime about a
    quarter of a millisecond at 128 x 1536); the outlier split of quantize/stream.py. Without
    either it is an identity, and the writer's QuantizeLinear (an input-side point) is the whole op."""
    value = b.read(node.inputs[0])
    axis = len(b.graph.tensors[node.inputs[0]].shape) - 1
    if node.attrs["factors"] is not None:
        value = b.node("Mul", [value, b.initializer(f"{node.name}_factors", np.asarray(node.attrs["factors"], np.float32))])[0]
    if node.attrs["copies"]:
        copied = b.node("Gather", [value, b.initializer(f"{node.name}_copies", np.asarray(node.attrs["copies"], np.int64))], axis=axis)[0]
        value = b.node("Concat", [value, copied], axis=axis)[0]
    return value


@onnx_op("reshape")
def reshape(b: OnnxBuilder, node: Node) -> str:
    shape = b.initializer("shape", np.asarray([0, *node.attrs["shape"]], dtype=np.int64))  # 0 keeps the batch axis
    return b.node("Reshape", [b.read(node.inputs[0]), shape])[0]


@onnx_op("transpose")
def transpose(b: OnnxBuilder, node: Node) -> str:
    return b.node("Transpose", [b.read(node.inputs[0])], perm=node.attrs["perm"])[0]


@onnx_op("pad")
def pad(b: OnnxBuilder, node: Node) -> str:
    pairs = node.attrs["pads"]
    widths = b.initializer("pads", np.asarray([p[0] for p in pairs] + [p[1] for p in pairs], dtype=np.int64))
    value = b.initializer("pad_value", np.float32(node.attrs["value"]))
    return b.node("Pad", [b.read(node.inputs[0]), widths, value], mode="constant")[0]


@onnx_op("resize")
def resize(b: OnnxBuilder, node: Node) -> str:
    """Resize by the size ratio: nearest picks floor(out * in / out) (PyTorch's and TFLite's
    nearest), bilinear maps pixel centres (align_corners False) or corners."""
    x = b.read(node.inputs[0])
    # Sizes, not scales: a float scale such as 25/12 can floor to one pixel short. The batch and
    # channel sizes come from the input, so the batch stays free.
    leading = b.node(
        "Slice",
        [b.node("Shape", [x])[0], b.initializer("zero", np.asarray([0], np.int64)), b.initializer("two", np.asarray([2], np.int64))],
    )[0]
    sizes = b.node("Concat", [leading, b.initializer("resize_hw", np.asarray(node.attrs["size"], np.int64))], axis=0)[0]
    if node.attrs["mode"] == "nearest":
        attrs: dict[str, Any] = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        transform = "align_corners" if node.attrs["align_corners"] else "half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": transform}
    return b.node("Resize", [x, "", "", sizes], **attrs)[0]


@onnx_op("slice")
def slice_(b: OnnxBuilder, node: Node) -> str:
    a = node.attrs
    values = {
        part: b.initializer(f"slice_{part}", np.asarray([a[key]], np.int64))
        for part, key in (("starts", "start"), ("ends", "end"), ("axes", "axis"), ("steps", "step"))
    }
    return b.node("Slice", [b.read(node.inputs[0]), values["starts"], values["ends"], values["axes"], values["steps"]])[0]


@onnx_op("concat")
def concat(b: OnnxBuilder, node: Node) -> str:
    return b.node("Concat", [b.read(name) for name in node.inputs], axis=node.attrs["axis"])[0]
