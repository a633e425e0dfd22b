"""Lowerings of the ops that text models add: an embedding table looked up by token ids
(``gather``: inputs are the ids, then the table)."""

from __future__ import annotations

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


@lowers(aten.to.dtype, aten._to_copy.default)
def to_dtype(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A cast: integer values (an attention mask) to float becomes ``cast``; float to float32
    is the tensor itself; to bool, a comparison with zero. Other targets (integers, float16)
    are refused."""
    source = node.args[0]
    target = node.args[1] if len(node.args) > 1 else node.kwargs.get("dtype")
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if target is None or (value is not None and value.dtype == target):
        ctx.alias(node, source)
        return
    if target == torch.bool and value is not None:  # x != 0, as 0/1 integers
        _compare(ctx, node, "ne", 0.0)
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
    """``x.masked_fill(cond, v)`` for a 0/1 condition (an attention mask): ``x * (1 - c) + c * v``
    in float, exact for every finite ``x``. An infinite ``v`` becomes float32's extreme, which
    a softmax turns into the same zero weight."""
    x, cond, value = node.args[0], node.args[1], node.args[2]
    if isinstance(value, torch.fx.Node):
        fixed = ctx.const(value)
        if fixed is None or fixed.size != 1:
            raise InputError(f"{node.name}: masked_fill with a computed value", "fill with a number (torch.finfo(x.dtype).min)")
        value = float(fixed.reshape(-1)[0])
    limit = float(np.finfo(np.float32).max)
    fill = float(np.clip(float(value), -limit, limit))  # type: ignore[arg-type]
    shape = ctx.shape(cond)  # type: ignore[arg-type]
    c = ctx.emit_inner("cast", node, "set", [ctx.name(cond)], tensor_shape=shape, helper=True)
    keep = ctx.emit_inner("sub", node, "keep", [ctx.name(1.0), c], tensor_shape=shape, helper=True)
    kept = ctx.emit_inner("mul", node, "kept", [ctx.name(x), keep], helper=True)
    filled = ctx.emit_inner("mul", node, "filled", [c, ctx.name(fill)], tensor_shape=shape, helper=True)
    ctx.emit("add", node, [kept, filled])
