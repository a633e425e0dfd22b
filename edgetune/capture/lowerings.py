"""ATen operator -> IR node lowerings, one small function per operator family."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch.fx

from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


def _arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _int(value: Any) -> int:
    return int(value)


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def _axis(dim: int, rank: int) -> int:
    return dim % rank


@lowers(aten.conv2d.default, aten.conv2d.padding)
def conv2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    x, weight = node.args[0], node.args[1]
    bias = _arg(node, 2, "bias", None)
    stride = _pair(_arg(node, 3, "stride", 1))
    padding = _arg(node, 4, "padding", 0)
    dilation = _pair(_arg(node, 5, "dilation", 1))
    groups = int(_arg(node, 6, "groups", 1))
    kernel = ctx.shape(weight)[2:]  # type: ignore[arg-type]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif stride == (1, 1):
            total = [dilation[i] * (kernel[i] - 1) for i in range(2)]
            pads = (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
            _emit_conv(ctx, node, x, weight, bias, stride, pads, dilation, groups)
            return
        else:
            raise InputError("conv2d with padding='same' and a stride", "pad explicitly")
    pad_h, pad_w = _pair(padding)
    _emit_conv(ctx, node, x, weight, bias, stride, (pad_h, pad_w, pad_h, pad_w), dilation, groups)


def _emit_conv(
    ctx: LoweringContext,
    node: torch.fx.Node,
    x: Any,
    weight: Any,
    bias: Any,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> None:
    inputs = [ctx.name(x), ctx.name(weight)]
    if bias is not None:
        inputs.append(ctx.name(bias))
    # pads are (top, left, bottom, right), the order ONNX uses.
    ctx.emit("conv2d", node, inputs, stride=list(stride), pads=list(pads), dilation=list(dilation), groups=groups)


@lowers(aten.conv_transpose2d.input)
def conv_transpose2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``nn.ConvTranspose2d``: the weight stored [out, in, kh, kw] (see WEIGHTED_OPS)."""
    weight = ctx.const(node.args[1])
    if weight is None:
        raise InputError(f"{node.name}: a transposed convolution with a computed weight", "give ConvTranspose2d its own parameter")
    stride, padding = _pair(_arg(node, 3, "stride", 1)), _pair(_arg(node, 4, "padding", 0))
    output_padding = _pair(_arg(node, 5, "output_padding", 0))
    if int(_arg(node, 6, "groups", 1)) != 1 or _pair(_arg(node, 7, "dilation", 1)) != (1, 1):
        raise InputError(f"{node.name}: a grouped or dilated ConvTranspose2d", "use groups=1 and dilation=1")
    inputs = [ctx.name(node.args[0]), ctx.constant(f"{ctx.resolve(node.args[1])}_oihw", np.swapaxes(weight, 0, 1))]
    bias = _arg(node, 2, "bias", None)
    if bias is not None:
        inputs.append(ctx.name(bias))
    pads = [padding[0], padding[1], padding[0], padding[1]]
    ctx.emit("conv_transpose2d", node, inputs, stride=list(stride), pads=pads, output_padding=list(output_padding), groups=1)


@lowers(aten.linear.default)
def linear(ctx: LoweringContext, node: torch.fx.Node) -> None:
    if ctx.const(node.args[1]) is None:
        raise InputError(f"{node.name}: a linear layer whose weight is computed", "give it a constant weight (a parameter)")
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    if rank > 3:
        raise InputError(f"{node.name}: a linear layer on a rank-{rank} tensor", "give it [batch, features] or [batch, steps, features]")
    bias = _arg(node, 2, "bias", None)
    inputs = [ctx.name(node.args[0]), ctx.name(node.args[1])]
    if bias is not None:
        inputs.append(ctx.name(bias))
    ctx.emit("linear", node, inputs)


@lowers(aten.batch_norm.default)
def batch_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    x, weight, bias, mean, var = node.args[:5]
    eps = float(_arg(node, 7, "eps", 1e-5))
    _emit_batch_norm(ctx, node, x, weight, bias, mean, var, eps)


@lowers(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    x, weight, bias, mean, var = node.args[:5]
    eps = float(_arg(node, 6, "eps", 1e-5))
    _emit_batch_norm(ctx, node, x, weight, bias, mean, var, eps)


def _emit_batch_norm(ctx: LoweringContext, node: torch.fx.Node, x: Any, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> None:
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):  # the native op returns (out, mean, invstd)
        node.meta["val"] = value[0]
    inputs = [ctx.name(x), ctx.name(mean), ctx.name(var)]
    inputs.append(ctx.name(weight) if weight is not None else "")
    inputs.append(ctx.name(bias) if bias is not None else "")
    ctx.emit("batch_norm", node, inputs, eps=eps)


@lowers(operator.getitem)
def getitem(ctx: LoweringContext, node: torch.fx.Node) -> None:
    source, index = node.args
    if isinstance(source, torch.fx.Node) and source.name in ctx.splits:
        axis, pieces = ctx.splits[source.name]
        start, end = pieces[int(index)]  # type: ignore[arg-type, call-overload]
        ctx.emit("slice", node, [ctx.name(source.args[0])], axis=axis, start=start, end=end, step=1)
        return
    if isinstance(source, torch.fx.Node) and source.name in ctx.unbinds:
        _select(ctx, node, source.args[0], ctx.unbinds[source.name], _int(index))
        return
    if isinstance(source, torch.fx.Node) and source.name in ctx.tuples:  # a recurrent layer's (output, h_n, ...)
        ctx.aliases[node.name] = ctx.tuples[source.name][_int(index)]
        return
    if index != 0 or not isinstance(source, torch.fx.Node) or "batch_norm" not in str(source.target):
        raise InputError(f"unsupported multi-output node {source}", "simplify the model's forward()")
    ctx.alias(node, source)


@lowers(aten.relu.default, aten.relu_.default)
def relu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("relu", node, [ctx.name(node.args[0])])


@lowers(aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default, aten.clamp_.default)
def clamp(ctx: LoweringContext, node: torch.fx.Node) -> None:
    default_low = -1.0 if "hardtanh" in str(node.target) else None
    default_high = 1.0 if "hardtanh" in str(node.target) else None
    low = _arg(node, 1, "min_val" if default_low is not None else "min", default_low)
    high = _arg(node, 2, "max_val" if default_high is not None else "max", default_high)
    x = ctx.name(node.args[0])
    if low == 0 and high == 6:
        ctx.emit("relu6", node, [x])
    elif low == 0 and high is None:
        ctx.emit("relu", node, [x])
    else:
        ctx.emit("clamp", node, [x], min=None if low is None else float(low), max=None if high is None else float(high))


@lowers(aten.relu6.default)
def relu6(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("relu6", node, [ctx.name(node.args[0])])


@lowers(aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor)
def add_sub(ctx: LoweringContext, node: torch.fx.Node) -> None:
    if _arg(node, 2, "alpha", 1) != 1:
        raise InputError(f"{node.target} with alpha other than 1", "write the scaling as a separate multiplication")
    _elementwise(ctx, node, "add" if "add" in str(node.target) else "sub")


@lowers(aten.mul.Tensor, aten.mul_.Tensor)
def mul(ctx: LoweringContext, node: torch.fx.Node) -> None:
    _elementwise(ctx, node, "mul")


def _elementwise(ctx: LoweringContext, node: torch.fx.Node, op: str) -> None:
    """An add, sub or mul. On integers (a mask, RoBERTa's position ids) it stays integer
    (``integer``); a float result of an integer operand (``x * mask``) casts that operand first."""
    if ctx.dtype(node) == "int64":
        ctx.emit(op, node, [ctx.name(node.args[0]), ctx.name(node.args[1])], integer=True)
        return
    operands = []
    for index, arg in enumerate(node.args[:2]):
        name = ctx.name(arg)
        if isinstance(arg, torch.fx.Node) and ctx.const(arg) is None and ctx.dtype(arg) == "int64":
            name = ctx.emit_inner("cast", node, f"float{index}", [name], tensor_shape=ctx.shape(arg), helper=True)
        operands.append(name)
    ctx.emit(op, node, operands)


@lowers(aten.div.Tensor)
def div(ctx: LoweringContext, node: torch.fx.Node) -> None:
    from edgetune.capture.lowerings_math import normalized  # F.normalize's division (that module imports this one)

    divisor = node.args[1]
    if normalized(ctx, node):
        return
    if not isinstance(divisor, (int, float)):
        fixed = ctx.const(divisor)
        if fixed is not None and fixed.size == 1:
            ctx.emit("mul", node, [ctx.name(node.args[0]), ctx.name(1.0 / float(fixed.reshape(-1)[0]))])
        else:  # computed in float in the int8 artifacts too (quantize/stream.py)
            ctx.emit("div", node, [ctx.name(node.args[0]), ctx.name(divisor)])
        return
    ctx.emit("mul", node, [ctx.name(node.args[0]), ctx.name(1.0 / float(divisor))])


@lowers(aten.adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    out_h, out_w = _pair(node.args[1])
    _, _, in_h, in_w = ctx.shape(node.args[0])  # type: ignore[arg-type]
    x = ctx.name(node.args[0])
    if (out_h, out_w) == (1, 1):
        ctx.emit("global_avgpool", node, [x])
    elif in_h % out_h == 0 and in_w % out_w == 0:
        kernel = [in_h // out_h, in_w // out_w]
        ctx.emit("avgpool2d", node, [x], kernel=kernel, stride=kernel, pads=[0, 0, 0, 0])
    else:
        raise InputError(f"adaptive_avg_pool2d from {in_h}x{in_w} to {out_h}x{out_w}", "use output sizes that divide the input")


@lowers(aten.avg_pool2d.default)
def avg_pool2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    pad = _pair(_arg(node, 3, "padding", 0))
    if _arg(node, 4, "ceil_mode", False) or (pad != (0, 0) and not _arg(node, 5, "count_include_pad", True)):
        raise InputError("avg_pool2d with ceil_mode or count_include_pad=False", "use the defaults")
    _, _, in_h, in_w = ctx.shape(node.args[0])  # type: ignore[arg-type]
    x = ctx.name(node.args[0])
    if kernel == (in_h, in_w) and pad == (0, 0):
        ctx.emit("global_avgpool", node, [x])
    else:
        ctx.emit("avgpool2d", node, [x], kernel=list(kernel), stride=list(stride), pads=[pad[0], pad[1], pad[0], pad[1]])


@lowers(aten.max_pool2d.default)
def max_pool2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    pad = _pair(_arg(node, 3, "padding", 0))
    if _pair(_arg(node, 4, "dilation", 1)) != (1, 1):
        raise InputError("max_pool2d with dilation", "use dilation 1")
    # ceil_mode: the last window may hang over the bottom or right edge, which extra padding
    # (ignored by a max, as PyTorch ignores it) expresses
    in_size, out_size = ctx.shape(node.args[0])[2:], ctx.shape(node)[2:]  # type: ignore[arg-type]
    extra = [max(0, (out_size[i] - 1) * stride[i] + kernel[i] - in_size[i] - 2 * pad[i]) for i in range(2)]
    pads = [pad[0], pad[1], pad[0] + extra[0], pad[1] + extra[1]]
    ctx.emit("maxpool2d", node, [ctx.name(node.args[0])], kernel=list(kernel), stride=list(stride), pads=pads)


@lowers(aten.mean.dim)
def mean(ctx: LoweringContext, node: torch.fx.Node) -> None:
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    dims = sorted(_axis(_int(d), rank) for d in _ints(node.args[1]))
    keepdim = bool(_arg(node, 2, "keepdim", False))
    x = ctx.name(node.args[0])
    if rank == 4 and dims == [2, 3] and keepdim:
        ctx.emit("global_avgpool", node, [x])
    else:
        ctx.emit("mean", node, [x], axes=dims, keepdim=keepdim)


@lowers(
    aten.flatten.using_ints,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
)
def reshape(ctx: LoweringContext, node: torch.fx.Node) -> None:
    in_shape = ctx.shape(node.args[0])  # type: ignore[arg-type]
    out_shape = ctx.shape(node)
    if not in_shape or not out_shape or in_shape[0] != out_shape[0]:
        raise InputError(f"{node.target} changes the batch axis ({list(in_shape)} -> {list(out_shape)})", "keep axis 0 as the batch axis")
    if in_shape == out_shape:
        ctx.alias(node, node.args[0])
        return
    ctx.emit("reshape", node, [ctx.name(node.args[0])], shape=list(out_shape[1:]))


@lowers(aten.pad.default, aten.constant_pad_nd.default)
def pad(ctx: LoweringContext, node: torch.fx.Node) -> None:
    widths = _ints(node.args[1])
    mode = _arg(node, 2, "mode", "constant") if node.target == aten.pad.default else "constant"
    value = _arg(node, 3 if node.target == aten.pad.default else 2, "value", 0.0) or 0.0
    if mode != "constant":
        raise InputError(f"pad mode {mode!r}", "use constant (zero) padding")
    if any(w < 0 for w in widths):
        raise InputError("negative padding (cropping)", "crop with slicing outside the model")
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    # torch lists (before, after) pairs from the last axis backwards; IR keeps per-axis pairs.
    pairs = [[0, 0] for _ in range(rank)]
    for i in range(len(widths) // 2):
        pairs[rank - 1 - i] = [widths[2 * i], widths[2 * i + 1]]
    ctx.emit("pad", node, [ctx.name(node.args[0])], pads=pairs, value=float(value))


@lowers(aten.cat.default)
def cat(ctx: LoweringContext, node: torch.fx.Node) -> None:
    parts = list(node.args[0])  # type: ignore[arg-type]
    rank = len(ctx.shape(node))
    axis = _axis(_int(_arg(node, 1, "dim", 0)), rank)
    if axis == 0:
        raise InputError("concatenation along the batch axis", "concatenate along channels or space")
    if any(ctx.const(p) is not None for p in parts):
        _concat_constants(ctx, node, parts, axis)
        return
    ctx.emit("concat", node, [ctx.name(p) for p in parts], axis=axis)


def _concat_constants(ctx: LoweringContext, node: torch.fx.Node, parts: list[Any], axis: int) -> None:
    """One activation joined with constants (a class token before the patches): the activation
    zero-padded along the axis, plus a constant holding the other parts' values. Both
    broadcast over the batch, which a concatenation of a batch-1 constant would not."""
    activations = [p for p in parts if ctx.const(p) is None]
    if len(activations) != 1:
        raise InputError(
            f"{node.name} concatenates constants with {len(activations)} activations", "join constants to one tensor at a time"
        )
    sizes = [ctx.shape(p)[axis] for p in parts]
    where = parts.index(activations[0])
    out_shape = ctx.shape(node)
    pairs = [[0, 0] for _ in out_shape]
    pairs[axis] = [int(sum(sizes[:where])), int(sum(sizes[where + 1 :]))]
    padded = ctx.emit_inner("pad", node, "padded", [ctx.name(activations[0])], tensor_shape=out_shape, pads=pairs, value=0.0)
    filler = np.zeros((1, *out_shape[1:]), np.float32)
    offset = 0
    for part, size in zip(parts, sizes):
        value = ctx.const(part)
        if value is not None:
            index = [slice(None)] * len(out_shape)
            index[axis] = slice(offset, offset + size)
            filler[tuple(index)] = value[:1]
        offset += size
    ctx.emit("add", node, [padded, ctx.constant(f"{node.name}.constant_rows", filler)])


@lowers(aten.transpose.int)
def transpose(ctx: LoweringContext, node: torch.fx.Node) -> None:
    rank = len(ctx.shape(node))
    first, second = _axis(_int(node.args[1]), rank), _axis(_int(node.args[2]), rank)
    perm = list(range(rank))
    perm[first], perm[second] = second, first
    if first == second:
        ctx.alias(node, node.args[0])
    elif 0 in (first, second):
        raise InputError(f"{node.name} swaps the batch axis", "keep axis 0 as the batch axis (batch_first=True for recurrent layers)")
    else:
        ctx.emit("transpose", node, [ctx.name(node.args[0])], perm=perm)


@lowers(aten.select.int)
def select(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``x[:, i]``: a slice of one index, without its axis. Indexing a recurrent layer's
    stacked final states (``h_n[-1]``) or its output sequence reads that step's tensor."""
    _select(ctx, node, node.args[0], _int(node.args[1]), _int(node.args[2]))


@lowers(aten.unbind.int)
def unbind(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """No node of its own: each piece its model reads (a getitem) becomes a select."""
    ctx.unbinds[node.name] = _int(_arg(node, 1, "dim", 0))


def _select(ctx: LoweringContext, node: torch.fx.Node, source: Any, dim: int, position: int) -> None:
    resolved = ctx.resolve(source)
    shape = ctx.shape(source)
    axis = _axis(dim, len(shape))
    index = position % shape[axis]
    if resolved in ctx.batch_permutes and axis == 0:  # q, k, v = qkv.permute(2, 0, 3, 1, 4): pick, then permute the rest
        origin, perm = ctx.batch_permutes[resolved]
        rest = [p - (p > perm[0]) for p in perm[1:]]
        kept = tuple(1 if i == perm[0] else d for i, d in enumerate(ctx.shape(origin)))
        one = ctx.emit_inner(
            "slice", node, "slice", [ctx.name(origin)], tensor_shape=kept, axis=perm[0], start=index, end=index + 1, step=1
        )
        dropped = tuple(d for i, d in enumerate(ctx.shape(origin)) if i != perm[0])
        picked = ctx.emit_inner("reshape", node, "picked", [one], tensor_shape=dropped, shape=list(dropped[1:]))
        if rest == sorted(rest):
            ctx.aliases[node.name] = picked
        else:
            ctx.emit("transpose", node, [picked], perm=rest)
        return
    if resolved in ctx.stacks and axis == 0:
        ctx.aliases[node.name] = ctx.stacks[resolved][index]
        return
    if resolved in ctx.sequences and axis == 1:
        ctx.aliases[node.name] = ctx.sequences[resolved][index]
        return
    if axis == 0:
        raise InputError(f"{node.name} indexes the batch axis", "keep axis 0 whole")
    kept = tuple(1 if i == axis else d for i, d in enumerate(shape))
    one = ctx.emit_inner("slice", node, "slice", [ctx.name(source)], tensor_shape=kept, axis=axis, start=index, end=index + 1, step=1)
    ctx.emit("reshape", node, [one], shape=list(ctx.shape(node)[1:]))


@lowers(aten.zeros.default)
def zeros(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A constant (a recurrent layer's zero initial state, usually)."""
    ctx.constants[node.name] = np.zeros(_ints(node.args[0]), np.float32)


@lowers(aten.zeros_like.default)
def zeros_like(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A constant of the tensor's shape (default token types, ``torch.zeros_like(input_ids)``):
    batch 1, broadcast against the batch, and an embedding of it folds to constant rows."""
    ctx.constants[node.name] = np.zeros(ctx.shape(node), np.float32)


@lowers(aten.permute.default)
def permute(ctx: LoweringContext, node: torch.fx.Node) -> None:
    rank = len(ctx.shape(node))
    perm = [_axis(d, rank) for d in _ints(node.args[1])]
    if perm[0] != 0:  # allowed only when its first axis is indexed right away (see _select)
        if 0 not in perm[1:] or perm.index(0) != 1:
            raise InputError("a permutation that moves the batch axis", "keep axis 0 as the batch axis")
        ctx.batch_permutes[node.name] = (node.args[0], perm)
        return
    ctx.emit("transpose", node, [ctx.name(node.args[0])], perm=perm)


@lowers(aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default)
def softmax(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """softmax or log_softmax (TFLite's LOG_SOFTMAX, int8 on its fixed grid) over the last axis."""
    op = "log_softmax" if "log_softmax" in str(node.target) else "softmax"
    rank = len(ctx.shape(node))
    axis = _axis(_int(node.args[1]), rank)
    if axis != rank - 1:
        raise InputError(f"{op} over an axis other than the last", f"apply {op} over the last axis")
    ctx.emit(op, node, [ctx.name(node.args[0])], axis=axis)


def _unary(op: str):  # type: ignore[no-untyped-def]
    def lower(ctx: LoweringContext, node: torch.fx.Node) -> None:
        ctx.emit(op, node, [ctx.name(node.args[0])])

    lower.__name__ = op
    return lower


lowers(aten.sigmoid.default, aten.sigmoid_.default)(_unary("sigmoid"))
lowers(aten.tanh.default, aten.tanh_.default)(_unary("tanh"))


@lowers(aten.silu.default, aten.silu_.default)
def silu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """x * sigmoid(x), as two ops: the TFLite converter writes SiLU (swish) so, and both
    runtimes have int8 kernels for each (LOGISTIC's output on the fixed 1/256 grid)."""
    x = ctx.name(node.args[0])
    ctx.emit("mul", node, [x, ctx.emit_inner("sigmoid", node, "sigmoid", [x])])


@lowers(aten.hardsigmoid.default, aten.hardsigmoid_.default)
def hardsigmoid(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """relu6(x + 3) / 6, as an add with a fused ReLU6 and a multiply by a constant."""
    shifted = ctx.emit_inner("add", node, "shifted", [ctx.name(node.args[0]), ctx.name(3.0)], act="relu6")
    ctx.emit("mul", node, [shifted, ctx.name(1.0 / 6.0)])


@lowers(aten.hardswish.default, aten.hardswish_.default)
def hardswish(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """x * relu6(x + 3) / 6, as an add with a fused ReLU6 and two multiplies. XNNPACK has no
    int8 HARD_SWISH: each one left to TFLite's kernels splits the delegated graph, and
    MobileNetV3-small ran 3.1x slower so (5.1 ms against 1.6 ms, bench/coverage.py's model);
    the output agrees with the fp32 model as closely (cosine 0.994 either way)."""
    x = ctx.name(node.args[0])
    shifted = ctx.emit_inner("add", node, "shifted", [x, ctx.name(3.0)], act="relu6")
    gate = ctx.emit_inner("mul", node, "gate", [shifted, ctx.name(1.0 / 6.0)])
    ctx.emit("mul", node, [x, gate])


@lowers(aten.leaky_relu.default, aten.leaky_relu_.default)
def leaky_relu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("leaky_relu", node, [ctx.name(node.args[0])], alpha=float(_arg(node, 1, "negative_slope", 0.01)))


@lowers(aten.prelu.default)
def prelu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """max(0, x) + alpha * min(0, x), alpha one value or one per channel (axis 1), stored
    shaped to broadcast over the input: (C, 1, 1) for an image."""
    alpha = ctx.const(node.args[1])
    if alpha is None:
        raise InputError(f"{node.name}: PReLU with a computed slope", "give nn.PReLU its own parameter")
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    shaped = alpha.reshape(-1, *([1] * (rank - 2))) if alpha.size > 1 and rank > 2 else alpha.reshape(-1)
    slope = ctx.constant(f"{ctx.resolve(node.args[1])}_slope", shaped)
    ctx.emit("prelu", node, [ctx.name(node.args[0]), slope])


@lowers(aten.gelu.default, aten.gelu_.default)
def gelu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    approximate = str(node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none"))
    ctx.emit("gelu", node, [ctx.name(node.args[0])], approximate=approximate == "tanh")


@lowers(aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec)
def upsample(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``F.interpolate`` and ``nn.Upsample``, nearest or bilinear, to the output's size. A scale
    factor must give a whole size: the runtimes map output to input pixels by size ratio."""
    bilinear = node.target == aten.upsample_bilinear2d.vec
    given = node.args[3] if bilinear and len(node.args) > 3 else (node.args[2] if not bilinear and len(node.args) > 2 else None)
    scales = [float(s) for s in given] if isinstance(given, (list, tuple)) else None  # type: ignore[arg-type]
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)  # type: ignore[arg-type]
    if scales is not None and any(abs(i * s - o) > 1e-6 for i, s, o in zip(in_shape[2:], scales, out_shape[2:])):
        raise InputError(
            f"interpolate by {scales} from {list(in_shape[2:])} does not give a whole size", "pass size= instead of scale_factor="
        )
    align = bool(node.args[2]) if bilinear else False
    mode = "bilinear" if bilinear else "nearest"
    ctx.emit("resize", node, [ctx.name(node.args[0])], mode=mode, align_corners=align, size=list(out_shape[2:]))


def _sliced_axis(ctx: LoweringContext, node: torch.fx.Node, dim: Any) -> int:
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    axis = _axis(_int(dim), rank)
    if axis == 0:
        raise InputError(f"{node.name} slices the batch axis", "keep axis 0 whole")
    return axis


@lowers(aten.split_with_sizes.default, aten.split.Tensor, aten.chunk.default)
def split(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """No node of its own: each piece its model reads (a getitem) becomes a slice."""
    axis = _sliced_axis(ctx, node, _arg(node, 2, "dim", 0))
    length = ctx.shape(node.args[0])[axis]  # type: ignore[arg-type]
    if node.target == aten.split_with_sizes.default:
        sizes = _ints(node.args[1])
    else:
        count = _int(node.args[1])
        step = -(-length // count) if node.target == aten.chunk.default else count
        sizes = [min(step, length - start) for start in range(0, length, step)]
    starts = np.cumsum([0, *sizes]).tolist()
    ctx.splits[node.name] = (axis, [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])])


@lowers(aten.slice.Tensor, aten.narrow.default)
def slice_(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``x[:, 2:5]``, ``x[..., ::2]`` and ``narrow``: a slice of one axis (not the batch's)."""
    rank = len(ctx.shape(node.args[0]))  # type: ignore[arg-type]
    axis = _axis(_int(_arg(node, 1, "dim", 0)), rank)
    length = ctx.shape(node.args[0])[axis]  # type: ignore[arg-type]
    if node.target == aten.narrow.default:
        start = _int(node.args[2]) % length
        end, step = start + _int(node.args[3]), 1
    else:
        start, end = _arg(node, 2, "start", None), _arg(node, 3, "end", None)
        step = _int(_arg(node, 4, "step", 1))
        start = 0 if start is None else max(min(_int(start) + (length if _int(start) < 0 else 0), length), 0)
        end = length if end is None else max(min(_int(end) + (length if _int(end) < 0 else 0), length), 0)
    if step < 1:
        raise InputError(f"{node.name} slices with step {step}", "slice with a positive step")
    if (start, end, step) == (0, length, 1):
        ctx.alias(node, node.args[0])
        return
    _sliced_axis(ctx, node, axis)  # a real slice of the batch axis is refused
    ctx.emit("slice", node, [ctx.name(node.args[0])], axis=axis, start=start, end=end, step=step)


@lowers(aten.dropout.default, aten.dropout_.default, aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default)
def identity(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.alias(node, node.args[0])
