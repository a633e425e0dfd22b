"""ONNX ops that text models add around the encoder, as PyTorch's exporters write them.

- An embedding lookup: ``Gather`` of a constant table by integer ids (the IR's ``gather``);
  see :func:`lookup`, which ``onnx_indexing.gather`` hands it to.
- The attention mask's arithmetic: ``Cast`` of integers to float, ``Equal`` and ``Not`` (0/1
  integers: ``compare``), ``Expand`` of integers, ``Where`` of a 0/1 condition (a float select,
  as the capture lowers ``masked_fill``).
- Pooling: ``ReduceSum`` (a mean times the count), a division by a computed count (``div``).
- ``F.normalize``: ``ReduceL2``, a ``Clip`` of it away from zero, an ``Expand`` back to the
  input's shape and the division, together one ``l2_normalize``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.capture.onnx_import import INTEGER_TYPES, OnnxContext, _attrs, imports
from edgetune.errors import InputError

FLOAT_TYPES = frozenset({1, 11})  # FLOAT, DOUBLE


def lookup(ctx: OnnxContext, proto: Any) -> bool:
    """``table[ids]`` with a constant [rows, features] table and integer ids: ``gather``.
    False when ``proto`` is another Gather."""
    table, ids = ctx.const(proto.input[0]), proto.input[1]
    if table is None or table.ndim != 2 or ctx.const(ids) is not None or int(_attrs(proto).get("axis", 0)) != 0:
        return False
    if not ctx.is_integer(ids):
        raise InputError(f"Gather {proto.name or proto.output[0]} looks rows up by float values", "give the ids as integers")
    ctx.emit("gather", proto, [ctx.name(ids), ctx.add_const(f"{proto.input[0]}_table", table)])
    return True


@imports("Cast")
def cast(ctx: OnnxContext, proto: Any) -> None:
    """Integers to float is ``cast``; a cast within integers or within floats changes nothing
    the IR keeps (it holds integers as int64, floats as float32)."""
    target = int(_attrs(proto)["to"])
    source = proto.input[0]
    from_integer = ctx.is_integer(source)
    if from_integer == (target in INTEGER_TYPES):
        ctx.alias(proto, source)
        return
    if from_integer and target in FLOAT_TYPES:
        ctx.emit("cast", proto, [ctx.name(source)])
        return
    raise InputError(f"Cast {proto.name or proto.output[0]} of float values to integers", "compute in float32, and cast masks to float")


@imports("Equal")
def equal(ctx: OnnxContext, proto: Any) -> None:
    """``mask == c``: 0/1 integers."""
    _compare(ctx, proto, "eq")


def _compare(ctx: OnnxContext, proto: Any, test: str) -> None:
    for side, other in ((proto.input[0], proto.input[1]), (proto.input[1], proto.input[0])):
        value = ctx.const(other)
        if value is not None and value.size == 1 and ctx.const(side) is None:
            ctx.emit("compare", proto, [ctx.name(side)], test=test, value=float(value.reshape(-1)[0]))
            return
    raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} compares two tensors", "compare a mask with a number")


@imports("Not")
def not_(ctx: OnnxContext, proto: Any) -> None:
    """A 0/1 flag flipped: equal to 0."""
    ctx.emit("compare", proto, [ctx.name(proto.input[0])], test="eq", value=0.0)


@imports("Where")
def where(ctx: OnnxContext, proto: Any) -> None:
    """``where(c, a, b)`` for a 0/1 condition: ``a * c + b * (1 - c)`` in float, a term of zero
    left out; infinities clipped to float32's range (a softmax still gives them no weight)."""
    cond, chosen, other = proto.input
    out = proto.output[0]
    flag = _helper(ctx, "cast", f"{out}_set", [ctx.name(cond)], ctx.shapes[cond])
    terms = []
    for value, suffix in ((chosen, "chosen"), (other, "other")):
        fixed = ctx.const(value)
        if fixed is not None and fixed.size == 1 and float(fixed.reshape(-1)[0]) == 0.0:
            continue
        if ctx.is_integer(value) and fixed is None:
            raise InputError(f"Where {proto.name or out} selects between integers", "select between float values")
        weight = flag
        if suffix == "other":
            weight = _helper(ctx, "sub", f"{out}_keep", [ctx.add_const(f"{out}_one", np.asarray(1.0)), flag], ctx.shapes[cond])
        operand = ctx.add_const(f"{out}_{suffix}_value", _finite(fixed)) if fixed is not None else ctx.name(value)
        terms.append((suffix, [operand, weight]))
    if not terms:
        ctx.constants[out] = np.zeros(ctx.shapes[out], np.float32)
        return
    if len(terms) == 1:
        ctx.emit("mul", proto, terms[0][1])
        return
    first = _helper(ctx, "mul", f"{out}_{terms[0][0]}", terms[0][1], ctx.shapes[out])
    second = _helper(ctx, "mul", f"{out}_{terms[1][0]}", terms[1][1], ctx.shapes[out])
    ctx.emit("add", proto, [first, second])


def _finite(value: np.ndarray) -> np.ndarray:
    limit = float(np.finfo(np.float32).max)
    return np.clip(np.nan_to_num(value.astype(np.float64), posinf=limit, neginf=-limit), -limit, limit).astype(np.float32)


def _helper(ctx: OnnxContext, op: str, name: str, inputs: list[str], shape: tuple[int, ...], **attrs: Any) -> str:
    """A float node of the importer's own between ONNX ops."""
    from edgetune.ir.graph import Node, Tensor

    while name in ctx.graph.tensors:
        name += "_"
    ctx.graph.tensors[name] = Tensor(name, tuple(shape))
    ctx.graph.nodes.append(Node(op, name, inputs, [name], attrs))
    return name


def _axes(ctx: OnnxContext, proto: Any) -> Any:
    """A reduction's axes: an attribute before opset 18, the second input from then on (None: all)."""
    axes = _attrs(proto).get("axes")
    if axes is None and len(proto.input) > 1 and proto.input[1]:
        axes = ctx.const(proto.input[1])
    return axes


@imports("ReduceSum")
def reduce_sum(ctx: OnnxContext, proto: Any) -> None:
    """A sum over non-batch axes: their mean times the count."""
    a, axes = _attrs(proto), _axes(ctx, proto)
    shape = ctx.shapes[proto.input[0]]
    dims = sorted(int(d) % len(shape) for d in (range(len(shape)) if axes is None else np.asarray(axes).reshape(-1)))
    if 0 in dims:
        raise InputError(f"ReduceSum {proto.name or proto.output[0]} sums over the batch axis", "keep axis 0 whole")
    keep = bool(a.get("keepdims", 1))
    out_shape = ctx.shapes[proto.output[0]]
    mean = _helper(ctx, "mean", f"{proto.output[0]}_mean", [ctx.name(proto.input[0])], out_shape, axes=dims, keepdim=keep)
    count = float(np.prod([shape[d] for d in dims]))
    ctx.emit("mul", proto, [mean, ctx.add_const(f"{proto.output[0]}_count", np.asarray(count))])


@imports("ReduceL2")
def reduce_l2(ctx: OnnxContext, proto: Any) -> None:
    """No node of its own: the division by it becomes an L2 normalization (:func:`divide`)."""
    a, axes = _attrs(proto), _axes(ctx, proto)
    rank = len(ctx.shapes[proto.input[0]])
    if axes is None or np.asarray(axes).size != 1 or not a.get("keepdims", 1):
        raise InputError(f"ReduceL2 {proto.name or proto.output[0]} other than F.normalize's", "normalize over one axis (F.normalize)")
    ctx.norms[proto.output[0]] = (ctx.name(proto.input[0]), int(np.asarray(axes).reshape(-1)[0]) % rank, 0.0)


def clamp_norm(ctx: OnnxContext, proto: Any) -> bool:
    """A Clip of a norm away from zero (F.normalize's eps): recorded, no node."""
    source = ctx.norms.get(ctx.aliases.get(proto.input[0], proto.input[0]))
    if source is None:
        return False
    low = ctx.const(proto.input[1]) if len(proto.input) > 1 and proto.input[1] else _attrs(proto).get("min")
    ctx.norms[proto.output[0]] = (source[0], source[1], float(np.asarray(low if low is not None else 0.0)))
    return True


@imports("Expand")
def expand(ctx: OnnxContext, proto: Any) -> None:
    """A norm spread back over its input (recorded), or integers (a mask) broadcast: ``expand``."""
    source = proto.input[0]
    if source in ctx.norms:
        ctx.norms[proto.output[0]] = ctx.norms[source]
        return
    if not ctx.is_integer(source):
        raise InputError(f"Expand {proto.name or proto.output[0]} of float values", "expand a mask, or let the operation broadcast")
    ctx.emit("expand", proto, [ctx.name(source)], shape=list(ctx.shapes[proto.output[0]][1:]))


def divide(ctx: OnnxContext, proto: Any) -> None:
    """``x / norm(x)`` is an L2 normalization; another computed divisor a float ``div``."""
    numerator, divisor = proto.input[0], proto.input[1]
    norm = ctx.norms.get(divisor)
    if norm is not None and norm[0] == ctx.name(numerator):
        ctx.emit("l2_normalize", proto, [norm[0]], axis=norm[1], eps=norm[2])
        return
    if norm is not None:
        raise InputError(f"Div {proto.name or proto.output[0]} by the norm of another tensor", "divide a tensor by its own norm")
    ctx.emit("div", proto, [ctx.name(numerator), ctx.name(divisor)])


@imports("And")
def and_(ctx: OnnxContext, proto: Any) -> None:
    """Two 0/1 masks' conjunction: the other mask where one is an all-true constant (recent
    transformers combine the padding mask with one), else their integer product."""
    first, second = proto.input
    for fixed, other in ((ctx.const(first), second), (ctx.const(second), first)):
        if fixed is not None and fixed.all() and ctx.shapes.get(other) == ctx.shapes.get(proto.output[0]):
            ctx.alias(proto, other)
            return
    ctx.emit("mul", proto, [ctx.name(first), ctx.name(second)], integer=True)
