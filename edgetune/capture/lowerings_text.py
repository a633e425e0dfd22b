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
    is the tensor itself. Other targets (integers, booleans, float16) are refused."""
    source = node.args[0]
    target = node.args[1] if len(node.args) > 1 else node.kwargs.get("dtype")
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if target is None or (value is not None and value.dtype == target):
        ctx.alias(node, source)
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
