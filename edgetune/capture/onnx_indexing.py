"""ONNX ops that take parts of an activation: Gather, Slice and Split.

A Gather or Split along the batch axis is refused, with one exception that attention blocks
export: ``qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`` followed by ``unbind(0)``
(Split and Squeeze) or ``qkv[i]`` (Gather). The Transpose that moves the batch axis is held
back (:func:`hold_batch_permute`), and each part picked from it becomes a slice of the
un-transposed tensor, a reshape and the rest of the permutation, as the capture lowers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.capture.onnx_import import OnnxContext, _attrs, imports
from edgetune.errors import InputError
from edgetune.ir.graph import Node, Tensor


def _slice(ctx: OnnxContext, source: str, out: str, axis: int, bounds: tuple[int, int, int]) -> str:
    start, end, step = bounds
    shape = list(ctx.graph.tensors[source].shape)
    shape[axis] = len(range(start, end, step))
    ctx.graph.tensors[out] = Tensor(out, tuple(shape), dtype=ctx.graph.tensors[source].dtype)
    ctx.graph.nodes.append(Node("slice", out, [source], [out], {"axis": axis, "start": start, "end": end, "step": step}))
    return out


def _add(ctx: OnnxContext, op: str, source: str, out: str, dims: tuple[int, ...], **attrs: Any) -> str:
    ctx.graph.tensors[out] = Tensor(out, dims, dtype=ctx.graph.tensors[source].dtype)
    ctx.graph.nodes.append(Node(op, out, [source], [out], attrs))
    return out


def hold_batch_permute(ctx: OnnxContext, proto: Any, perm: list[int]) -> bool:
    """Hold back a Transpose that moves the batch axis to position 1 when every reader picks
    single parts along its new axis 0 (Gather, or Split into ones)."""
    readers = ctx.readers.get(proto.output[0], [])
    if perm.index(0) != 1 or not readers or any(reader not in ("Gather", "Split") for reader in readers):
        return False
    ctx.batch_permutes[proto.output[0]] = (ctx.name(proto.input[0]), perm)
    return True


def _pick(ctx: OnnxContext, base: str, held: tuple[str, list[int]], index: int) -> str:
    """Part ``index`` of a held-back permutation: slice the source, drop the axis, permute the rest."""
    origin, perm = held
    shape = ctx.graph.tensors[origin].shape
    index %= shape[perm[0]]
    one = _slice(ctx, origin, f"{base}_slice", perm[0], (index, index + 1, 1))
    dropped = tuple(d for i, d in enumerate(shape) if i != perm[0])
    picked = _add(ctx, "reshape", one, f"{base}_picked", dropped, shape=list(dropped[1:]))
    rest = [p - (p > perm[0]) for p in perm[1:]]
    if rest == sorted(rest):
        return picked
    return _add(ctx, "transpose", picked, f"{base}_moved", tuple(dropped[r] for r in rest), perm=rest)


@imports("Gather")
def gather(ctx: OnnxContext, proto: Any) -> None:
    """``x[:, t]``: a slice of one index, the axis dropped (or ``qkv[i]`` of a held permutation);
    or an embedding table's rows looked up by token ids (onnx_text)."""
    from edgetune.capture.onnx_text import lookup

    if lookup(ctx, proto):
        return
    index = ctx.const(proto.input[1])
    shape = ctx.shapes[proto.input[0]]
    axis = int(_attrs(proto).get("axis", 0)) % len(shape)
    held = ctx.batch_permutes.get(proto.input[0])
    if index is not None and index.ndim == 0 and held is not None and axis == 0:
        ctx.aliases[proto.output[0]] = _pick(ctx, proto.name or proto.output[0], held, int(index))
        return
    if index is None or index.size != 1 or axis == 0:
        raise InputError(
            f"Gather {proto.name or proto.output[0]} picks computed or several indices, or along the batch",
            "slice one index of a non-batch axis",
        )
    start = int(index.reshape(-1)[0]) % shape[axis]
    sliced = _slice(ctx, ctx.name(proto.input[0]), f"{proto.name or proto.output[0]}_slice", axis, (start, start + 1, 1))
    if index.ndim == 1:
        ctx.alias(proto, sliced)
    else:
        ctx.emit("reshape", proto, [sliced], shape=list(ctx.shapes[proto.output[0]][1:]))


def _split_sizes(ctx: OnnxContext, proto: Any, length: int) -> list[int]:
    a = _attrs(proto)
    given = ctx.const(proto.input[1]) if len(proto.input) > 1 and proto.input[1] else a.get("split")
    if given is not None:
        return [int(v) for v in np.asarray(given).reshape(-1)]
    parts = len(proto.output)
    size = -(-length // parts)  # opset 18's num_outputs: equal parts, the last one smaller
    return [min(size, length - i * size) for i in range(parts)]


@imports("Split")
def split(ctx: OnnxContext, proto: Any) -> None:
    """One slice per part, along a non-batch axis (or the parts of a held permutation)."""
    shape = ctx.shapes[proto.input[0]]
    axis = int(_attrs(proto).get("axis", 0)) % len(shape)
    sizes = _split_sizes(ctx, proto, shape[axis])
    held = ctx.batch_permutes.get(proto.input[0])
    if held is not None and axis == 0 and set(sizes) == {1}:
        for index, out in enumerate(proto.output):
            ctx.aliases[out] = _pick(ctx, f"{proto.name or out}_{index}", held, index)
            ctx.picked.add(out)
        return
    if axis == 0:
        raise InputError(f"Split {proto.name or proto.output[0]} splits the batch axis", "split a non-batch axis")
    source, start = ctx.name(proto.input[0]), 0
    for out, size in zip(proto.output, sizes):
        if out:
            ctx.aliases[out] = _slice(ctx, source, f"{out}_part", axis, (start, start + size, 1))
        start += size


@imports("Slice")
def slice_(ctx: OnnxContext, proto: Any) -> None:
    """A slice of an activation with constant bounds: one IR slice per axis (the batch axis
    kept whole)."""
    values = [ctx.const(name) if name else None for name in proto.input[1:]]
    if values[0] is None or values[1] is None:
        raise InputError(f"Slice {proto.name or proto.output[0]} has computed bounds", "export it with constant bounds")
    rank = len(ctx.shapes[proto.input[0]])
    count = len(values[0].reshape(-1))
    axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(count)
    steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(count, np.int64)
    bounds = [slice(None)] * rank
    for start, end, axis, step in zip(
        values[0].reshape(-1).tolist(),
        values[1].reshape(-1).tolist(),
        np.asarray(axes).reshape(-1).tolist(),
        np.asarray(steps).reshape(-1).tolist(),
    ):
        bounds[int(axis) % rank] = slice(int(start), int(end), int(step))
    source = ctx.name(proto.input[0])
    shape = list(ctx.shapes[proto.input[0]])
    for axis, bound in enumerate(bounds):
        start, end, step = bound.indices(shape[axis])
        if (start, end, step) == (0, shape[axis], 1):
            continue
        if axis == 0 or step < 1:
            raise InputError(f"Slice {proto.name or proto.output[0]} slices the batch axis or steps backwards", "slice other axes forwards")
        shape[axis] = len(range(start, end, step))
        out = f"{proto.name or proto.output[0]}_axis{axis}"
        ctx.graph.tensors[out] = Tensor(out, tuple(shape))
        ctx.graph.nodes.append(Node("slice", out, [source], [out], {"axis": axis, "start": start, "end": end, "step": step}))
        source = out
    ctx.aliases[proto.output[0]] = source
