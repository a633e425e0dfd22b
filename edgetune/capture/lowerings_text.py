"""Lowerings of the ops that text models add: an embedding table looked up by token ids
(``gather``: inputs are the ids, then the table)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx

from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


@lowers(aten.embedding.default)
def embedding(ctx: LoweringContext, node: torch.fx.Node) -> None:
    table, ids = node.args[0], node.args[1]
    if ctx.const(table) is None:
        raise InputError(f"{node.name}: an embedding whose table is computed", "give nn.Embedding its own weight")
    if len(ctx.shape(table)) != 2:  # type: ignore[arg-type]
        raise InputError(f"{node.name}: an embedding table of rank {len(ctx.shape(table))}", "give a [rows, features] table")  # type: ignore[arg-type]
    fixed = ctx.const(ids)
    if fixed is not None:  # constant ids (position ids): the rows themselves, a constant
        rows = ctx.const(table)[np.asarray(fixed, np.int64)]  # type: ignore[index]
        name = ctx.constant(f"{node.name}.rows", rows)
        ctx.constants[name] = ctx.graph.tensors[name].data  # type: ignore[assignment]
        ctx.aliases[node.name] = name
        return
    # padding_idx and sparse change only the gradient; the lookup is the same.
    ctx.emit("gather", node, [ctx.name(ids), ctx.name(table)])


@lowers(aten._assert_tensor_metadata.default)
def assert_metadata(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A dtype check torch.export leaves before a cast: nothing to compute."""


@lowers(aten.to.device)
def to_device(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """The tensor itself (a move to the CPU it is on), or a cast when a dtype comes along."""
    if node.kwargs.get("dtype") is not None or (len(node.args) > 2 and node.args[2] is not None):
        to_dtype(ctx, node)
        return
    ctx.alias(node, node.args[0])


@lowers(aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout)
def to_dtype(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A cast: integer values (an attention mask) to float becomes ``cast``; float to float32
    is the tensor itself; to bool, a comparison with zero. Other targets (integers, float16)
    are refused."""
    source = node.args[0]
    target = node.kwargs.get("dtype")
    if target is None and node.target == aten.to.dtype and len(node.args) > 1:
        target = node.args[1]
    elif target is None and node.target == aten.to.device and len(node.args) > 2:
        target = node.args[2]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if target is None or (value is not None and value.dtype == target):
        ctx.alias(node, source)
        return
    if target == torch.bool and value is not None:  # x != 0, as 0/1 integers
        _compare(ctx, node, "ne", 0.0)
        return
    if value is not None and not value.dtype.is_floating_point and isinstance(target, torch.dtype) and not target.is_floating_point:
        ctx.alias(node, source)  # integers of another width (RoBERTa's position ids): the IR's int64
        return
    if target not in (torch.float32, torch.float64) or value is None:
        raise InputError(f"{node.name}: a cast to {target}", "compute in float32, and cast integer inputs (a mask) to float")
    if value.dtype.is_floating_point:
        ctx.alias(node, source)
        return
    if ctx.const(source) is not None:  # a constant cast stays a constant
        ctx.alias(node, source)
        return
    ctx.emit("cast", node, [ctx.name(source)])


@lowers(aten.lift_fresh_copy.default, aten.detach_.default)
def fresh_copy(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A constant written in the forward (``torch.tensor(finfo.min)``), or a detach: the tensor itself."""
    ctx.alias(node, node.args[0])


@lowers(aten.eq.Scalar, aten.ne.Scalar)
def eq_ne(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``mask == 0``: 0/1 integers (booleans are integers in the IR)."""
    value = node.args[1]
    if not isinstance(value, (int, float)):
        raise InputError(f"{node.name}: a comparison with a tensor", "compare with a Python number (mask == 0)")
    _compare(ctx, node, "eq" if node.target == aten.eq.Scalar else "ne", float(value))


def _compare(ctx: LoweringContext, node: torch.fx.Node, test: str, value: float) -> None:
    source = node.args[0]
    fixed = ctx.const(source)
    if fixed is not None:
        ctx.constants[node.name] = ((fixed == value) if test == "eq" else (fixed != value)).astype(np.float32)
        return
    ctx.emit("compare", node, [ctx.name(source)], test=test, value=value)


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``x.masked_fill(cond, v)`` for a 0/1 condition (an attention mask): ``where(cond, v, x)``."""
    _select(ctx, node, node.args[1], node.args[2], node.args[0])


@lowers(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def where(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``torch.where(cond, a, b)`` for a 0/1 condition (an attention mask)."""
    _select(ctx, node, node.args[0], node.args[1], node.args[2])


def _select(ctx: LoweringContext, node: torch.fx.Node, cond: Any, chosen: Any, other: Any) -> None:
    """``chosen`` where ``cond`` is set, else ``other``: ``chosen * c + other * (1 - c)`` in
    float, exact for finite values, a term of zero left out. An infinite number becomes
    float32's extreme, which a softmax turns into the same zero weight."""
    shape = ctx.shape(cond)
    chosen, other = _finite(ctx, chosen), _finite(ctx, other)
    used = [(value, suffix) for value, suffix in ((chosen, "chosen"), (other, "other")) if not (isinstance(value, float) and value == 0.0)]
    if not used:
        ctx.constants[node.name] = np.zeros(ctx.shape(node), np.float32)
        return
    c = ctx.emit_inner("cast", node, "set", [ctx.name(cond)], tensor_shape=shape, helper=True)
    terms = []
    for value, suffix in used:
        weight = c if suffix == "chosen" else ctx.emit_inner("sub", node, "keep", [ctx.name(1.0), c], tensor_shape=shape, helper=True)
        terms.append((suffix, [ctx.name(value), weight]))
    if len(terms) == 1:
        ctx.emit("mul", node, terms[0][1])
        return
    first = ctx.emit_inner("mul", node, terms[0][0], terms[0][1], helper=True)
    second = ctx.emit_inner("mul", node, terms[1][0], terms[1][1], helper=True)
    ctx.emit("add", node, [first, second])


def _finite(ctx: LoweringContext, value: Any) -> Any:
    """A Python number (or a one-value constant) clipped to float32's range; a tensor as it is."""
    if isinstance(value, torch.fx.Node):
        fixed = ctx.const(value)
        if fixed is None or fixed.size != 1:
            return value
        value = float(fixed.reshape(-1)[0])
    limit = float(np.finfo(np.float32).max)
    return float(np.clip(float(value), -limit, limit))


@lowers(aten.__and__.Tensor, aten.logical_and.default)
def logical_and(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """Two masks' conjunction: where one is an all-true constant (recent transformers' mask
    functions combine the padding mask with one), the other mask; else the product of the two
    0/1 integer masks."""
    first, second = node.args[0], node.args[1]
    for fixed, other in ((ctx.const(first), second), (ctx.const(second), first)):
        if fixed is None:
            continue
        if not fixed.all():
            raise InputError(f"{node.name}: a mask combined with a partly false constant", "combine masks with arithmetic")
        ctx.alias(node, other)  # broadcast where read, as the constant would be
        return
    ctx.emit("mul", node, [ctx.name(first), ctx.name(second)], integer=True)


@lowers(aten.index.Tensor)
def index(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``mask[batch_index, kv_index]`` over a [batch, steps] mask, as recent transformers'
    mask functions gather the padding mask: with the batch index the example's (0, for all
    rows) and the step index every step in order, it is the mask reshaped."""
    source, indices = node.args[0], list(node.args[1])  # type: ignore[arg-type]
    fixed = [None if i is None else ctx.const(i) for i in indices]
    shape = ctx.shape(source)  # type: ignore[arg-type]
    out = ctx.shape(node)
    steps = fixed[1] if len(fixed) == 2 else None
    if (
        len(shape) == 2
        and fixed[0] is not None
        and steps is not None
        and not fixed[0].any()
        and fixed[0].size == 1
        and np.array_equal(steps.reshape(-1), np.arange(shape[1]))
        and steps.shape[-1] == shape[1]
        and out[-1] == shape[1]
        and int(np.prod(out)) == shape[1]
    ):
        ctx.emit("reshape", node, [ctx.name(source)], shape=list(out[1:]))
        return
    raise InputError(f"{node.name}: indexing a tensor with tensors", "index with slices, or gather rows with an embedding")


@lowers(aten.type_as.default)
def type_as(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A cast to another tensor's type: between integers, the tensor itself; to float, a cast."""
    source, other = node.args[0], node.args[1]
    wanted = other.meta["val"].dtype  # type: ignore[union-attr]
    have = source.meta["val"].dtype  # type: ignore[union-attr]
    if have.is_floating_point == wanted.is_floating_point:
        ctx.alias(node, source)
    elif wanted.is_floating_point:
        ctx.emit("cast", node, [ctx.name(source)])
    else:
        raise InputError(f"{node.name}: a float tensor cast to integers", "keep integer values (ids, masks) integer")


@lowers(aten.cumsum.default)
def cumsum(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A running sum of integers along the steps (RoBERTa's position ids count the tokens
    that are not padding)."""
    source = node.args[0]
    axis = int(node.args[1])  # type: ignore[arg-type]
    rank = len(ctx.shape(node))
    axis = axis % rank
    if axis == 0 or ctx.dtype(source) != "int64":  # type: ignore[arg-type]
        raise InputError(f"{node.name}: a running sum over the batch, or of float values", "sum integers along the steps")
    ctx.emit("cumsum", node, [ctx.name(source)], axis=axis)
