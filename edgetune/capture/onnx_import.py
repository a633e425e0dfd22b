"""Import an fp32 ONNX model into the IR.

One function per ONNX op family, registered by op type. Nodes that read only constants and
shapes (Shape, Gather, Concat, Cast, ... computing pads, bounds and targets) are evaluated
first (:mod:`edgetune.capture.onnx_fold`); ONNX shape inference gives the static shapes the IR
needs, and a Reshape whose target is computed takes the inferred output shape. Unsupported
ops are collected and reported together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.capture.onnx_fold import fold_constants, folded_model
from edgetune.capture.onnx_patterns import batch_gather_as_reshape, fuse_gelu, fuse_layer_norm, gemm_over_tokens
from edgetune.errors import InputError, UnsupportedOpsError
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, Tensor
from edgetune.ir.passes import simplify
from edgetune.registry import Registry

Importer = Callable[["OnnxContext", Any], None]
IMPORTERS: Registry[Importer] = Registry("ONNX importer")
imports = IMPORTERS.register
SHAPE_ONLY = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "ConstantOfShape", "Range", "Mul", "Add", "Div", "Sub"}


# ONNX element types (onnx.TensorProto) that the IR holds as int64: token ids, masks, flags.
INTEGER_TYPES = frozenset({6, 7, 9})  # INT32, INT64, BOOL


class OnnxContext:
    def __init__(
        self, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], graph: Graph, types: dict[str, int] | None = None
    ) -> None:
        self.constants = constants
        self.shapes = shapes
        self.graph = graph
        self.types = types or {}  # tensor name -> ONNX element type
        self.norms: dict[str, tuple[str, int, float]] = {}  # an L2 norm: (its input, axis, clamp) (onnx_text)
        self.aliases: dict[str, str] = {}
        self.sequences: dict[str, Any] = {}  # time-major tensors, held per step (onnx_recurrent.Sequence)
        self.readers: dict[str, list[str]] = {}  # tensor name -> the op types that read it
        self.batch_permutes: dict[str, tuple[str, list[int]]] = {}  # held-back Transposes (onnx_indexing)
        self.picked: set[str] = set()  # Split parts of a held permutation, their unit axis already dropped

    def name(self, value: str) -> str:
        value = self.aliases.get(value, value)
        if value in self.constants and value not in self.graph.tensors:
            data = np.array(self.constants[value], np.float32)
            self.graph.tensors[value] = Tensor(value, tuple(data.shape), data)
        return value

    def const(self, value: str) -> np.ndarray | None:
        return self.constants.get(self.aliases.get(value, value))

    def add_const(self, base: str, data: np.ndarray) -> str:
        name = base
        while name in self.graph.tensors or name in self.constants:
            name += "_"
        self.constants[name] = np.array(data, np.float32)
        return self.name(name)

    def emit(self, op: str, proto: Any, inputs: list[str], **attrs: Any) -> Node:
        out = proto.output[0]
        shape = self.shapes.get(out)
        if shape is None:
            raise InputError(f"ONNX shape inference found no shape for {out} ({proto.op_type})", "export the model with static shapes")
        self.graph.tensors[out] = Tensor(out, shape, dtype=self.dtype(out))
        node = Node(op, proto.name or out, inputs, [out], attrs)
        self.graph.nodes.append(node)
        return node

    def dtype(self, value: str) -> str:
        """The IR's element type of ``value``: int64 for integers and flags, else float32."""
        return "int64" if self.types.get(value) in INTEGER_TYPES else "float32"

    def is_integer(self, value: str) -> bool:
        return self.dtype(self.aliases.get(value, value)) != "float32"

    def alias(self, proto: Any, source: str) -> None:
        self.aliases[proto.output[0]] = self.aliases.get(source, source)


def _attrs(proto: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in proto.attribute}


def _pads4(pads: list[int] | None) -> list[int]:
    # ONNX: [top, left, bottom, right] for 2-D, the IR's order too.
    return list(pads) if pads else [0, 0, 0, 0]


@imports("Conv")
def conv(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise InputError(f"Conv {proto.name} uses auto_pad", "export with explicit pads")
    weight = ctx.const(proto.input[1])
    if weight is None or weight.ndim not in (3, 4):
        raise InputError(f"Conv {proto.name} has a non-constant weight or is not 1-D or 2-D", "export a convolution with constant weights")
    if weight.ndim == 3:
        _conv1d(ctx, proto, a, weight)
        return
    inputs = [ctx.name(i) for i in proto.input if i]
    ctx.emit(
        "conv2d",
        proto,
        inputs,
        stride=list(a.get("strides", [1, 1])),
        pads=_pads4(a.get("pads")),
        dilation=list(a.get("dilations", [1, 1])),
        groups=int(a.get("group", 1)),
    )


def _on_unit_height(ctx: OnnxContext, proto: Any, op: str, extra: list[str], attrs: dict[str, Any]) -> None:
    """A 1-D op as the capture lowers one: reshape [N, C, L] to a unit height, the 2-D op,
    reshape back (the reshapes between two 1-D layers cancel in ``simplify``)."""
    x, out = ctx.name(proto.input[0]), proto.output[0]
    (n, c, length), out_shape = ctx.shapes[proto.input[0]], ctx.shapes[out]
    tall, wide = f"{out}_in2d", f"{out}_2d"
    ctx.graph.tensors[tall] = Tensor(tall, (n, c, 1, length))
    ctx.graph.nodes.append(Node("reshape", tall, [x], [tall], {"shape": [c, 1, length]}))
    ctx.graph.tensors[wide] = Tensor(wide, (out_shape[0], out_shape[1], 1, out_shape[2]))
    ctx.graph.nodes.append(Node(op, proto.name or out, [tall, *extra], [wide], attrs))
    ctx.graph.tensors[out] = Tensor(out, tuple(out_shape))
    ctx.graph.nodes.append(Node("reshape", f"{out}_1d", [wide], [out], {"shape": list(out_shape[1:])}))


def _lifted(a: dict[str, Any], kernel: list[int] | None = None) -> dict[str, Any]:
    """1-D window attributes as 2-D ones over a unit height."""
    pads = list(a.get("pads", [0, 0]))
    attrs = {"stride": [1, a.get("strides", kernel or [1])[0]], "pads": [0, pads[0], 0, pads[1]]}
    return {**attrs, "kernel": [1, kernel[0]]} if kernel else {**attrs, "dilation": [1, a.get("dilations", [1])[0]]}


def _conv1d(ctx: OnnxContext, proto: Any, a: dict[str, Any], weight: np.ndarray) -> None:
    extra = [ctx.add_const(f"{proto.input[1]}_2d", weight[:, :, None, :])]
    extra += [ctx.name(proto.input[2])] if len(proto.input) > 2 and proto.input[2] else []
    _on_unit_height(ctx, proto, "conv2d", extra, {**_lifted(a), "groups": int(a.get("group", 1))})


@imports("ConvTranspose")
def conv_transpose(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    weight = ctx.const(proto.input[1])
    if weight is None or weight.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise InputError(f"ConvTranspose {proto.name} is not 2-D with a constant weight and explicit pads", "export ConvTranspose2d")
    if int(a.get("group", 1)) != 1 or list(a.get("dilations", [1, 1])) != [1, 1] or "output_shape" in a:
        raise InputError(f"ConvTranspose {proto.name} is grouped, dilated or sized by output_shape", "use groups=1, dilation=1 and pads")
    pads = _pads4(a.get("pads"))
    if pads[:2] != pads[2:]:
        raise InputError(f"ConvTranspose {proto.name} pads its sides unequally", "use PyTorch's symmetric padding")
    inputs = [ctx.name(proto.input[0]), ctx.add_const(f"{proto.input[1]}_oihw", np.swapaxes(weight, 0, 1))]
    inputs += [ctx.name(proto.input[2])] if len(proto.input) > 2 and proto.input[2] else []
    ctx.emit(
        "conv_transpose2d",
        proto,
        inputs,
        stride=list(a.get("strides", [1, 1])),
        pads=pads,
        output_padding=list(a.get("output_padding", [0, 0])),
        groups=1,
    )


@imports("Gemm")
def gemm(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    weight = ctx.const(proto.input[1])
    if weight is None or a.get("transA", 0):
        raise InputError(f"Gemm {proto.name} has a non-constant weight or transA", "export linear layers with constant weights")
    weight = weight if a.get("transB", 0) else weight.T
    weight = weight * float(a.get("alpha", 1.0))
    inputs = [ctx.name(proto.input[0]), ctx.add_const(f"{proto.input[1]}_linear", weight)]
    if len(proto.input) > 2 and proto.input[2]:
        bias = ctx.const(proto.input[2])
        if bias is None:
            raise InputError(f"Gemm {proto.name} has a non-constant bias", "export with constant biases")
        bias = np.broadcast_to(bias * float(a.get("beta", 1.0)), (weight.shape[0],))
        inputs.append(ctx.add_const(f"{proto.input[2]}_linear", np.ascontiguousarray(bias)))
    ctx.emit("linear", proto, inputs)


@imports("BatchNormalization")
def batch_norm(ctx: OnnxContext, proto: Any) -> None:
    x, scale, bias, mean, var = proto.input[:5]
    ctx.emit(
        "batch_norm",
        proto,
        [ctx.name(x), ctx.name(mean), ctx.name(var), ctx.name(scale), ctx.name(bias)],
        eps=float(_attrs(proto).get("epsilon", 1e-5)),
    )


@imports("Relu")
def relu(ctx: OnnxContext, proto: Any) -> None:
    ctx.emit("relu", proto, [ctx.name(proto.input[0])])


@imports("Clip")
def clip(ctx: OnnxContext, proto: Any) -> None:
    from edgetune.capture.onnx_text import clamp_norm

    if clamp_norm(ctx, proto):  # F.normalize's norm kept away from zero
        return
    a = _attrs(proto)
    low = ctx.const(proto.input[1]) if len(proto.input) > 1 and proto.input[1] else a.get("min")
    high = ctx.const(proto.input[2]) if len(proto.input) > 2 and proto.input[2] else a.get("max")
    low_value = None if low is None else float(np.asarray(low))
    high_value = None if high is None else float(np.asarray(high))
    op = "relu6" if (low_value, high_value) == (0.0, 6.0) else "clamp"
    attrs = {} if op == "relu6" else {"min": low_value, "max": high_value}
    ctx.emit(op, proto, [ctx.name(proto.input[0])], **attrs)


@imports("Max", "Min")
def bound(ctx: OnnxContext, proto: Any) -> None:
    """``max(x, c)`` or ``min(x, c)`` with a one-value constant (a count kept away from zero, as
    edgetune's own writer spells a clamp): a clamp."""
    if len(proto.input) != 2:
        raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} of {len(proto.input)} operands", "bound one tensor by a number")
    from edgetune.capture.onnx_text import clamp_norm

    if proto.op_type == "Max" and clamp_norm(ctx, proto):  # F.normalize's norm kept away from zero
        return
    for x, other in ((proto.input[0], proto.input[1]), (proto.input[1], proto.input[0])):
        value = ctx.const(other)
        if value is not None and value.size == 1 and ctx.const(x) is None:
            limit = float(np.asarray(value).reshape(-1)[0])
            ctx.emit(
                "clamp", proto, [ctx.name(x)], min=limit if proto.op_type == "Max" else None, max=limit if proto.op_type == "Min" else None
            )
            return
    raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} of two tensors", "bound a tensor by a number")


@imports("Add", "Sub", "Mul", "Div")
def binary(ctx: OnnxContext, proto: Any) -> None:
    left, right = proto.input[0], proto.input[1]
    if ctx.const(left) is not None and ctx.const(right) is not None:
        return  # shape arithmetic: both sides constant
    if proto.op_type == "Div":
        divisor = ctx.const(right)
        if divisor is None:  # a masked mean's count, or F.normalize's norm
            from edgetune.capture.onnx_text import divide

            divide(ctx, proto)
            return
        ctx.emit("mul", proto, [ctx.name(left), ctx.add_const(f"{right}_reciprocal", 1.0 / divisor)])
        return
    integer = {"integer": True} if ctx.is_integer(proto.output[0]) else {}  # a mask's or position ids' arithmetic
    ctx.emit(proto.op_type.lower(), proto, [ctx.name(left), ctx.name(right)], **integer)


@imports("GlobalAveragePool")
def global_avgpool(ctx: OnnxContext, proto: Any) -> None:
    if len(ctx.shapes[proto.input[0]]) == 3:
        _on_unit_height(ctx, proto, "global_avgpool", [], {})
        return
    ctx.emit("global_avgpool", proto, [ctx.name(proto.input[0])])


@imports("AveragePool", "MaxPool")
def pool(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    if a.get("ceil_mode", 0) or (proto.op_type == "AveragePool" and a.get("pads") and not a.get("count_include_pad", 0)):
        raise InputError(f"{proto.op_type} {proto.name} uses ceil_mode or excludes padding from the average", "export with the defaults")
    kernel = list(a["kernel_shape"])
    op = "avgpool2d" if proto.op_type == "AveragePool" else "maxpool2d"
    if len(kernel) == 1:
        _on_unit_height(ctx, proto, op, [], _lifted(a, kernel))
        return
    ctx.emit(op, proto, [ctx.name(proto.input[0])], kernel=kernel, stride=list(a.get("strides", kernel)), pads=_pads4(a.get("pads")))


@imports("ReduceMean")
def reduce_mean(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    axes = a.get("axes")
    if axes is None and len(proto.input) > 1:
        axes = ctx.const(proto.input[1])
    rank = len(ctx.shapes[proto.input[0]])
    dims = sorted(int(d) % rank for d in axes)  # type: ignore[union-attr]
    keep = bool(a.get("keepdims", 1))
    if rank == 4 and dims == [2, 3] and keep:
        ctx.emit("global_avgpool", proto, [ctx.name(proto.input[0])])
    else:
        ctx.emit("mean", proto, [ctx.name(proto.input[0])], axes=dims, keepdim=keep)


@imports("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx: OnnxContext, proto: Any) -> None:
    out_shape = ctx.shapes[proto.output[0]]
    in_shape = ctx.shapes[proto.input[0]]
    if in_shape == out_shape or (proto.input[0] in ctx.picked and out_shape == in_shape[1:]):
        ctx.alias(proto, proto.input[0])
    else:
        ctx.emit("reshape", proto, [ctx.name(proto.input[0])], shape=list(out_shape[1:]))


@imports("Transpose")
def transpose(ctx: OnnxContext, proto: Any) -> None:
    perm = list(_attrs(proto)["perm"])
    from edgetune.capture.onnx_indexing import hold_batch_permute
    from edgetune.capture.onnx_recurrent import steps_of

    if perm[0] != 0 and steps_of(ctx, proto):  # a batch-first input made time-major for a GRU or LSTM
        return
    if perm[0] != 0 and hold_batch_permute(ctx, proto, perm):  # q, k, v picked from a qkv permutation
        return
    if perm[0] != 0:
        raise InputError(
            f"Transpose {proto.name} moves the batch axis",
            "keep axis 0 as the batch axis (nn.MultiheadAttention's export folds the batch into the heads: give edgetune the PyTorch model)",
        )
    ctx.emit("transpose", proto, [ctx.name(proto.input[0])], perm=perm)


@imports("Pad")
def pad(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    mode = a.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise InputError(f"Pad {proto.name} uses mode {mode!r}", "use constant padding")
    widths = ctx.const(proto.input[1]) if len(proto.input) > 1 else a.get("pads")
    if widths is None:
        raise InputError(f"Pad {proto.name} has computed pads", "export with constant pads")
    value = ctx.const(proto.input[2]) if len(proto.input) > 2 and proto.input[2] else a.get("value", 0.0)
    widths = [int(w) for w in np.asarray(widths)]
    rank = len(widths) // 2
    pairs = [[widths[i], widths[i + rank]] for i in range(rank)]
    ctx.emit("pad", proto, [ctx.name(proto.input[0])], pads=pairs, value=float(np.asarray(value if value is not None else 0.0)))


@imports("Concat")
def concat(ctx: OnnxContext, proto: Any) -> None:
    rank = len(ctx.shapes[proto.output[0]])
    ctx.emit("concat", proto, [ctx.name(i) for i in proto.input], axis=int(_attrs(proto)["axis"]) % rank)


@imports("Softmax", "LogSoftmax")
def softmax(ctx: OnnxContext, proto: Any) -> None:
    rank = len(ctx.shapes[proto.output[0]])
    axis = int(_attrs(proto).get("axis", -1)) % rank
    if axis != rank - 1:
        raise InputError(f"{proto.op_type} {proto.name} over axis {axis}", "apply it over the last axis")
    ctx.emit("softmax" if proto.op_type == "Softmax" else "log_softmax", proto, [ctx.name(proto.input[0])], axis=axis)


@imports("Sigmoid", "Tanh", "Softplus", "Mish")
def unary(ctx: OnnxContext, proto: Any) -> None:
    ctx.emit(proto.op_type.lower(), proto, [ctx.name(proto.input[0])])


@imports("Elu")
def elu(ctx: OnnxContext, proto: Any) -> None:
    ctx.emit("elu", proto, [ctx.name(proto.input[0])], alpha=float(_attrs(proto).get("alpha", 1.0)))


@imports("Neg")
def neg(ctx: OnnxContext, proto: Any) -> None:
    ctx.emit("mul", proto, [ctx.name(proto.input[0]), ctx.add_const(f"{proto.output[0]}_minus_one", np.asarray(-1.0))])


@imports("GlobalMaxPool")
def global_maxpool(ctx: OnnxContext, proto: Any) -> None:
    if len(ctx.shapes[proto.input[0]]) == 3:
        length = ctx.shapes[proto.input[0]][2]
        _on_unit_height(ctx, proto, "maxpool2d", [], {"kernel": [1, length], "stride": [1, length], "pads": [0, 0, 0, 0]})
        return
    height, width = ctx.shapes[proto.input[0]][2:]
    ctx.emit("maxpool2d", proto, [ctx.name(proto.input[0])], kernel=[height, width], stride=[height, width], pads=[0, 0, 0, 0])


@imports("DepthToSpace")
def depth_to_space(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    if a.get("mode", b"DCR") not in (b"CRD", "CRD"):
        raise InputError(f"DepthToSpace {proto.name} in DCR order", "export PyTorch's pixel_shuffle (CRD order)")
    ctx.emit("depth_to_space", proto, [ctx.name(proto.input[0])], block=int(a["blocksize"]))


@imports("HardSwish")
def hardswish(ctx: OnnxContext, proto: Any) -> None:
    """x * relu6(x + 3) / 6, as the capture lowers it (XNNPACK has no int8 HARD_SWISH)."""
    x, out = ctx.name(proto.input[0]), proto.output[0]
    shifted, gate = f"{out}_shifted", f"{out}_gate"
    for name in (shifted, gate):
        ctx.graph.tensors[name] = Tensor(name, ctx.shapes[out])
    three, sixth = ctx.add_const(f"{out}_three", np.asarray(3.0)), ctx.add_const(f"{out}_sixth", np.asarray(1.0 / 6.0))
    ctx.graph.nodes.append(Node("add", shifted, [x, three], [shifted], {"act": "relu6"}))
    ctx.graph.nodes.append(Node("mul", gate, [shifted, sixth], [gate]))
    ctx.emit("mul", proto, [x, gate])


@imports("HardSigmoid")
def hardsigmoid(ctx: OnnxContext, proto: Any) -> None:
    """clip(alpha * x + beta, 0, 1): PyTorch's (alpha 1/6, beta 1/2) as the capture lowers it,
    relu6(x + 3) / 6; other slopes (Keras' 0.2) as a multiply, an add and a clamp."""
    a = _attrs(proto)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x, out = ctx.name(proto.input[0]), proto.output[0]
    shifted = f"{out}_shifted"
    ctx.graph.tensors[shifted] = Tensor(shifted, ctx.shapes[out])
    if abs(alpha * 6.0 - 1.0) < 1e-6 and abs(beta - 0.5) < 1e-6:
        ctx.graph.nodes.append(Node("add", shifted, [x, ctx.add_const(f"{out}_three", np.asarray(3.0))], [shifted], {"act": "relu6"}))
        ctx.emit("mul", proto, [shifted, ctx.add_const(f"{out}_sixth", np.asarray(1.0 / 6.0))])
        return
    scaled = f"{out}_scaled"
    ctx.graph.tensors[scaled] = Tensor(scaled, ctx.shapes[out])
    ctx.graph.nodes.append(Node("mul", scaled, [x, ctx.add_const(f"{out}_alpha", np.asarray(alpha))], [scaled]))
    ctx.graph.nodes.append(Node("add", shifted, [scaled, ctx.add_const(f"{out}_beta", np.asarray(beta))], [shifted]))
    ctx.emit("clamp", proto, [shifted], min=0.0, max=1.0)


@imports("LeakyRelu")
def leaky_relu(ctx: OnnxContext, proto: Any) -> None:
    ctx.emit("leaky_relu", proto, [ctx.name(proto.input[0])], alpha=float(_attrs(proto).get("alpha", 0.01)))


@imports("PRelu")
def prelu(ctx: OnnxContext, proto: Any) -> None:
    slope = ctx.const(proto.input[1])
    if slope is None:
        raise InputError(f"PRelu {proto.name} with a computed slope", "export the slope as a constant")
    rank = len(ctx.shapes[proto.input[0]]) if proto.input[0] in ctx.shapes else 4
    shaped = slope.reshape(-1, *([1] * (rank - 2))) if slope.size > 1 and rank > 2 else slope.reshape(-1)
    ctx.emit("prelu", proto, [ctx.name(proto.input[0]), ctx.add_const(f"{proto.input[1]}_slope", shaped)])


@imports("LayerNormalization")  # opset 17
def layer_norm(ctx: OnnxContext, proto: Any) -> None:
    a, rank = _attrs(proto), len(ctx.shapes[proto.input[0]])
    if int(a.get("axis", -1)) % rank != rank - 1:
        raise InputError(f"LayerNormalization {proto.name} over more than the last axis", "normalize over the last axis only")
    gamma = ctx.const(proto.input[1])
    beta = ctx.const(proto.input[2]) if len(proto.input) > 2 and proto.input[2] else np.zeros_like(gamma)
    if gamma is None or beta is None:
        raise InputError(f"LayerNormalization {proto.name} with computed scales", "export its scale and bias as constants")
    inputs = [ctx.name(proto.input[0]), ctx.add_const(f"{proto.input[1]}_gamma", gamma), ctx.add_const(f"{proto.output[0]}_beta", beta)]
    ctx.emit("layer_norm", proto, inputs, eps=float(a.get("epsilon", 1e-5)))


@imports("MatMul")
def matmul(ctx: OnnxContext, proto: Any) -> None:
    """A product with a constant matrix is a linear layer; of two activations, a matmul."""
    weight = ctx.const(proto.input[1])
    if weight is not None and weight.ndim == 2:
        ctx.emit("linear", proto, [ctx.name(proto.input[0]), ctx.add_const(f"{proto.input[1]}_linear", np.ascontiguousarray(weight.T))])
        return
    ranks = {len(ctx.shapes.get(name, ())) for name in proto.input}
    if len(ranks) != 1 or not ranks <= {3, 4} or weight is not None or ctx.const(proto.input[0]) is not None:
        raise InputError(f"MatMul {proto.name} of other than two activations of rank 3 or 4", "multiply two activations of one rank")
    ctx.emit("matmul", proto, [ctx.name(proto.input[0]), ctx.name(proto.input[1])])


@imports("Gelu")  # opset 20
def gelu(ctx: OnnxContext, proto: Any) -> None:
    approximate = _attrs(proto).get("approximate", b"none")
    ctx.emit("gelu", proto, [ctx.name(proto.input[0])], approximate=approximate in (b"tanh", "tanh"))


@imports("Resize", "Upsample")
def resize(ctx: OnnxContext, proto: Any) -> None:
    """The Resize forms PyTorch's exporter writes for nearest and bilinear interpolation."""
    a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in _attrs(proto).items()}
    if proto.op_type == "Upsample" or "coordinate_transformation_mode" not in a or a.get("antialias", 0):
        # Upsample and Resize before opset 11 map pixels their own way; antialias filters
        raise InputError(
            f"{proto.op_type} {proto.name} is an older or antialiased resize", "export with opset 11 or later, without antialias"
        )
    mode, transform = a.get("mode", "nearest"), a["coordinate_transformation_mode"]
    nearest = mode == "nearest" and transform == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor"
    linear = mode == "linear" and transform in ("pytorch_half_pixel", "half_pixel", "align_corners")
    if not (nearest or linear):
        raise InputError(
            f"{proto.op_type} {proto.name} uses mode {mode} with {transform} coordinates",
            "export nearest (asymmetric, floor) or bilinear (half-pixel or align_corners) interpolation",
        )
    shape = ctx.shapes.get(proto.output[0])
    if shape is None:
        raise InputError(f"ONNX shape inference found no shape for {proto.output[0]} (Resize)", "export the model with static shapes")
    size = list(shape[2:])
    ctx.emit(
        "resize",
        proto,
        [ctx.name(proto.input[0])],
        mode="nearest" if nearest else "bilinear",
        align_corners=transform == "align_corners",
        size=size,
    )


@imports("Identity", "Dropout")
def identity(ctx: OnnxContext, proto: Any) -> None:
    ctx.alias(proto, proto.input[0])


def _fix_input_shape(path: Path, model: Any, sample_shape: tuple[int, ...] | None) -> None:
    """Give the input a batch of one and the sample's shape, so shape inference (with data
    propagation: Shape -> Gather -> Concat) gives every tensor a static shape."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or len(dims) == 0:
            continue
        if not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
        declared = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if sample_shape is None and None in declared:
            shown = ",".join("?" if d is None else str(d) for d in declared)
            raise InputError(f"{path}'s input has dynamic dimensions [{shown}]", "pass --input-shape with a sample's shape")
        if sample_shape is None:
            continue
        if len(sample_shape) != len(declared) or any(d is not None and d != s for d, s in zip(declared, sample_shape)):
            shown = ",".join("?" if d is None else str(d) for d in declared)
            raise InputError(f"{path} takes samples of shape [{shown}], not {list(sample_shape)}", "give data or --input-shape that fits")
        for dim, size in zip(dims[1:], sample_shape):
            dim.dim_value = int(size)


def _load(path: Path, sample_shape: tuple[int, ...] | None = None) -> Any:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InputError(
            f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})", "re-export it from its framework"
        ) from None
    _fix_input_shape(path, model, sample_shape)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise InputError(
            f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})", "re-export it from its framework"
        ) from None
    names = [model.graph.name, *(n.name for n in model.graph.node)]
    names += [name for n in model.graph.node for name in (*n.input, *n.output)]
    if any(isinstance(name, bytes) for name in names):  # protobuf hands back invalid UTF-8 as bytes
        raise InputError(f"{path} is not a valid ONNX model (a name is not UTF-8 text)", "re-export it from its framework")
    return model


def _import_node(ctx: OnnxContext, proto: Any) -> None:
    """A recurrent layer's time-major tensors go to the sequence ops; all else to IMPORTERS."""
    from edgetune.capture import onnx_recurrent

    sequence = next((seq for name in proto.input if (seq := onnx_recurrent.sequence_of(ctx, name)) is not None), None)
    if sequence is not None and proto.op_type not in ("GRU", "LSTM"):
        onnx_recurrent.import_sequence_op(ctx, proto, sequence)
    else:
        IMPORTERS[proto.op_type](ctx, proto)


def _constants(model: Any, path: Path) -> dict[str, np.ndarray]:
    from onnx import TensorProto, numpy_helper

    if any(t.data_type not in (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32) for t in model.graph.initializer):
        raise InputError(f"{path} holds non-float weights (already quantized?)", "give edgetune the fp32 model")
    try:
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for proto in model.graph.node:
            if proto.op_type == "Constant" and proto.attribute[0].name == "value":
                constants[proto.output[0]] = numpy_helper.to_array(proto.attribute[0].t)
    except (ValueError, IndexError, TypeError) as exc:
        raise InputError(f"{path} holds a constant whose data does not fit its shape ({str(exc)[:120]})", "re-export the model") from None
    return constants


def _shapes(model: Any, constants: dict[str, np.ndarray]) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str]]:
    """Every tensor's inferred shape (an unknown dimension read as 1), its element type, and
    the names whose every dimension is known."""
    types: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    exact: set[str] = set(constants)
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tensor_type = info.type.tensor_type
        types[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
            if all(d.HasField("dim_value") for d in dims):
                exact.add(info.name)
    for name, data in constants.items():
        shapes[name] = tuple(data.shape)
    return shapes, types, exact


def _fold(model: Any, constants: dict[str, np.ndarray]) -> Any:
    """Fold constant subgraphs until none is left: a shape becomes known once the pads or
    bounds before it are folded, and a Shape of it folds in the next round."""
    for _ in range(len(model.graph.node) + 1):
        shapes, _, exact = _shapes(model, constants)
        folded = fold_constants(model, constants, {name: shapes[name] for name in exact if name in shapes})
        if not folded:
            break
        try:
            model = folded_model(model, constants, folded)
        except Exception as exc:  # shape inference of the folded model: a malformed file
            raise InputError(f"the ONNX model's shapes do not add up ({str(exc).splitlines()[0][:160]})", "re-export the model") from None
    return model


def import_onnx(path: Path, sample_shape: tuple[int, ...] | None = None, names: tuple[str, ...] = ()) -> Graph:
    """The IR graph of an fp32 ONNX file; ``sample_shape`` (a sample's shape, without the
    batch) fixes the inputs' dynamic dimensions and must agree with their fixed ones. Several
    inputs (token ids, an attention mask, token types) share that shape; ``names`` orders them
    as the data holds them (default: the file's order)."""
    from onnx import TensorProto

    # register Gather, Slice, Split; GRU, LSTM; Cast, ReduceSum, ReduceL2, Expand, Equal, Where
    from edgetune.capture import onnx_indexing, onnx_recurrent, onnx_text  # noqa: F401

    model = _load(path, sample_shape)
    constants = _constants(model, path)
    inputs = [i for i in model.graph.input if i.name not in constants]
    if not inputs or len(model.graph.output) != 1:
        raise InputError(f"{path} has {len(inputs)} inputs and {len(model.graph.output)} outputs", "edgetune handles one output")
    inputs = _ordered(path, inputs, names)
    model = _fold(model, constants)
    shapes, types, _ = _shapes(model, constants)
    fuse_gelu(model, constants)  # after shape inference: opsets before 20 have no Gelu to infer
    fuse_layer_norm(model, constants, shapes)  # nor before 17 a LayerNormalization
    batch_gather_as_reshape(model, constants, shapes)  # a padding mask gathered per (batch, key) pair
    gemm_over_tokens(model, shapes)  # a linear layer over tokens written as reshape, Gemm, reshape

    live = _data_dependent(model, {i.name for i in inputs})

    def computes_shapes(proto: Any) -> bool:  # integers from shapes, not from the inputs' values (a mask's are)
        integers = all(types.get(o) in (TensorProto.INT64, TensorProto.INT32) for o in proto.output)
        return proto.op_type in SHAPE_ONLY and integers and not any(name in live for name in proto.input)

    compute = [p for p in model.graph.node if p.op_type != "Constant" and not computes_shapes(p)]
    missing = IMPORTERS.missing(p.op_type for p in compute)
    if missing:
        raise UnsupportedOpsError(missing, "edgetune's ONNX import")
    graph = Graph(inputs=[i.name for i in inputs], outputs=[], tensors={}, nodes=[])
    ctx = OnnxContext(constants, shapes, graph, types)
    for value in inputs:
        graph.tensors[value.name] = Tensor(value.name, shapes[value.name], dtype=ctx.dtype(value.name))
    for proto in compute:
        for name in proto.input:
            ctx.readers.setdefault(name, []).append(proto.op_type)
    for proto in compute:
        _import_node(ctx, proto)
    output = model.graph.output[0].name
    if output in ctx.sequences:
        raise InputError(
            f"{path}'s output is a recurrent layer's whole time-major sequence", "read one step (out[:, -1]) or the final state (h_n[-1])"
        )
    graph.outputs = [ctx.name(output)]
    fold_constant_bias(graph)
    simplify(graph)
    return graph


def _data_dependent(model: Any, inputs: set[str]) -> set[str]:
    """The tensors whose values depend on the inputs' values (a Shape's output does not)."""
    live = set(inputs)
    for proto in model.graph.node:  # in topological order, as ONNX requires
        if proto.op_type not in ("Shape", "Size") and any(name in live for name in proto.input):
            live.update(proto.output)
    return live


def _ordered(path: Path, inputs: list[Any], names: tuple[str, ...]) -> list[Any]:
    """The file's inputs in the order of ``names`` (the data's), each a float or an integer tensor."""
    from onnx import TensorProto

    for value in inputs:
        kind = value.type.tensor_type.elem_type
        if kind != TensorProto.FLOAT and kind not in INTEGER_TYPES:
            kind_name = TensorProto.DataType.Name(kind) if kind in TensorProto.DataType.values() else str(kind)
            raise InputError(f"{path}'s input {value.name} holds {kind_name} values", "export float32 inputs, or integer ids and masks")
    if not names or len(inputs) == 1:
        return inputs
    by_name = {value.name: value for value in inputs}
    if sorted(names) != sorted(by_name):
        raise InputError(
            f"the data names inputs {', '.join(names)}, {path} takes {', '.join(by_name)}", "name the data's arrays like the inputs"
        )
    return [by_name[name] for name in names]


def fold_constant_bias(graph: Graph) -> None:
    """MatMul + Add(constant) (and Conv + Add) as exported by some tools: fold the constant into the bias."""
    producers = graph.producers()
    consumers = graph.consumers()
    for node in [n for n in graph.nodes if n.op == "add"]:
        const_side = [i for i in node.inputs if graph.tensors[i].data is not None]
        act_side = [i for i in node.inputs if graph.tensors[i].data is None]
        if len(const_side) != 1 or len(act_side) != 1:
            continue
        source = producers.get(act_side[0])
        if source is None or source.op not in WEIGHTED_OPS or len(consumers[act_side[0]]) != 1 or source.act != "none":
            continue
        channels = graph.tensors[source.inputs[1]].shape[0]
        addend = graph.const(const_side[0])
        if addend.size not in (1, channels):
            continue
        addend = np.broadcast_to(addend.reshape(-1), (channels,)).astype(np.float32)
        bias = graph.const(source.inputs[2]) if len(source.inputs) > 2 else np.zeros(channels, np.float32)
        name = f"{source.name}.bias_folded"
        graph.tensors[name] = Tensor(name, (channels,), (bias + addend).astype(np.float32))
        source.inputs[2:] = [name]
        if node.act != "none":  # relu6(conv(x) + 3) of a HardSigmoid: the conv takes the activation
            source.attrs["act"] = node.act
        graph.rename_input(node.outputs[0], source.outputs[0])
        graph.nodes.remove(node)
    graph.remove_unused()
