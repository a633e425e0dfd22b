"""Structured pruning of transformer blocks: feed-forward neurons and attention heads, removed
for real so that both artifacts hold smaller linear layers and fewer heads in their reshapes.

The channel groups of ``groups.py`` follow axis 1, a CNN's channels; a transformer's features
sit on the last axis of [batch, tokens, features] and its heads behind a reshape. Two patterns
are found on the graph instead, as they are computed, whatever wrote the model:

- **Feed-forward neurons**: a linear layer over tokens whose output only a chain of
  activations (GELU, ReLU, ...) reads, and that chain only one linear layer, as its input.
  Neuron j is row j of the first layer (weight and bias) and column j of the second.
- **Attention heads**: linear layers whose outputs are reshaped from [.., H * d] to [.., H, d]
  (query, key, value), followed through the ops that keep heads apart (transposes, the two
  products of activations, a scale or mask added or multiplied with size 1 on the head axis,
  a softmax over another axis) to the reshape that merges [.., H, d] back and the linear
  layer that reads it (the output projection). Head h is rows h*d to (h+1)*d of each
  projection and the same columns of the output projection; the reshapes get the new head
  count. A head-carrying tensor that reaches anything else (a graph output, an op not listed)
  keeps the block whole.

Each unit is ranked like a channel (``importance.py``): the norm or the data-driven saliency
of its rows and columns, each layer normalised by its mean. At least one neuron and one head
of every block stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.ir.graph import ACTIVATION_OPS, Graph, Node, Tensor

ELEMENTWISE = ("add", "sub", "mul", "div")


@dataclass(eq=False)
class Block:
    """Prunable units of one pattern: ``kind`` "neurons" or "heads", ``count`` units."""

    kind: str
    count: int
    # (layer, rows per unit): layers whose output rows are the units, in blocks of that size
    rows: list[tuple[Node, int]] = field(default_factory=list)
    # (layer, columns per unit): layers whose input columns are the units
    columns: list[tuple[Node, int]] = field(default_factory=list)
    # tensor -> (axis, size per unit): shapes that follow the units
    tensors: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (reshape, attrs index, size per unit): reshape targets that follow the units
    targets: list[tuple[Node, int, int]] = field(default_factory=list)
    # (node, constant, axis): constants with one entry per unit, cut with them
    constants: list[tuple[Node, str, int]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return [node.name for node, _ in [*self.rows, *self.columns]]


def _tokens_linear(graph: Graph, node: Node) -> bool:
    return node.op == "linear" and len(graph.tensors[node.outputs[0]].shape) >= 3


def find_blocks(graph: Graph) -> list[Block]:
    """Every feed-forward and attention block of ``graph`` whose units can be removed."""
    consumers = graph.consumers()
    blocks = [b for node in graph.nodes if (b := _feed_forward(graph, node, consumers)) is not None]
    return blocks + _attention(graph, consumers)


def _feed_forward(graph: Graph, node: Node, consumers: dict[str, list[Node]]) -> Block | None:
    if not _tokens_linear(graph, node) or node.outputs[0] in graph.outputs:
        return None
    width = graph.tensors[node.outputs[0]].shape[-1]
    block = Block("neurons", width, rows=[(node, 1)], tensors={node.outputs[0]: (-1, 1)})
    current = node.outputs[0]
    while True:
        readers = consumers.get(current, [])
        if len(readers) != 1 or current in graph.outputs:
            return None
        reader = readers[0]
        if reader.op == "linear" and reader.inputs[0] == current and reader is not node:
            block.columns.append((reader, 1))
            return block
        if reader.op not in ACTIVATION_OPS:
            return None
        current = reader.outputs[0]
        block.tensors[current] = (-1, 1)


@dataclass
class _Heads:
    """The walk of one attention block: head-carrying tensors and the axis that holds heads."""

    graph: Graph
    consumers: dict[str, list[Node]]
    heads: int
    block: Block
    axes: dict[str, int] = field(default_factory=dict)  # tensor -> head axis (from the front)
    seen: set[int] = field(default_factory=set)

    def carry(self, name: str, axis: int) -> bool:
        known = self.axes.get(name)
        if known is not None:
            return known == axis
        if name in self.graph.outputs:
            return False
        self.axes[name] = axis
        self.block.tensors[name] = (axis, 1)
        return all(self.follow(reader, name) for reader in self.consumers.get(name, []))

    def follow(self, node: Node, source: str) -> bool:
        """Carry the head axis through ``node`` (reading ``source``); False where it cannot."""
        axis = self.axes[source]
        shape = self.graph.tensors[source].shape
        if node.op == "transpose":
            return self.carry(node.outputs[0], list(node.attrs["perm"]).index(axis))
        if node.op == "softmax":
            return node.attrs["axis"] % len(shape) != axis and self.carry(node.outputs[0], axis)
        if node.op == "matmul":  # both operands must carry the heads too (checked once the block is walked)
            return axis < len(shape) - 2 and self.carry(node.outputs[0], axis)
        if node.op in ELEMENTWISE:
            return self.elementwise(node, axis)
        if node.op == "reshape":
            return self.merge(node, source, axis)
        return False

    def elementwise(self, node: Node, axis: int) -> bool:
        """An operand without heads broadcasts over them (size 1 on the head axis), or is a
        constant with one entry per head; one with heads must be walked too (checked later)."""
        out_rank = len(self.graph.tensors[node.outputs[0]].shape)
        if id(node) not in self.seen:
            self.seen.add(id(node))
            for name in node.inputs:
                offset, size = self.at(name, axis, out_rank)
                if self.graph.tensors[name].data is not None and size == self.heads and size > 1:
                    self.block.constants.append((node, name, offset))
        return self.carry(node.outputs[0], axis)

    def at(self, name: str, axis: int, out_rank: int) -> tuple[int, int]:
        """An operand's axis that broadcasts against the output's head ``axis``, and its size
        there (1 where the operand has no such axis)."""
        shape = self.graph.tensors[name].shape
        offset = axis - (out_rank - len(shape))
        return offset, (shape[offset] if 0 <= offset < len(shape) else 1)

    def closed(self) -> bool:
        """Every operand with heads of a node the walk reached was walked too: a product or a
        sum never mixes a pruned tensor with an unpruned one."""
        for name, axis in list(self.axes.items()):
            for reader in self.consumers.get(name, []):
                if reader.op not in ("matmul", *ELEMENTWISE):
                    continue
                out_rank = len(self.graph.tensors[reader.outputs[0]].shape)
                for other in reader.inputs:
                    offset, size = self.at(other, axis, out_rank)
                    walked = other in self.axes and self.axes[other] == offset
                    if self.graph.tensors[other].data is None and not walked and (size != 1 or reader.op == "matmul"):
                        return False
        return True

    def merge(self, node: Node, source: str, axis: int) -> bool:
        """[.., H, d] back to [.., H * d] over the last axis, read by linear layers as their input."""
        shape, out = self.graph.tensors[source].shape, self.graph.tensors[node.outputs[0]].shape
        if axis != len(shape) - 2 or tuple(out[:-1]) != tuple(shape[:-2]) or out[-1] != shape[-2] * shape[-1]:
            return False
        size = int(shape[-1])
        readers = self.consumers.get(node.outputs[0], [])
        if not readers or node.outputs[0] in self.graph.outputs:
            return False
        if any(not _tokens_linear(self.graph, r) or r.inputs[0] != node.outputs[0] for r in readers):
            return False
        self.block.targets.append((node, len(out) - 2, size))
        self.block.tensors[node.outputs[0]] = (-1, size)
        self.block.columns += [(r, size) for r in readers]
        return True


def _split(graph: Graph, node: Node, consumers: dict[str, list[Node]]) -> tuple[Node, int, int] | None:
    """A token linear layer whose output only a reshape reads, to [.., H, d] with H > 1: the
    reshape, H and d."""
    readers = consumers.get(node.outputs[0], [])
    if not _tokens_linear(graph, node) or len(readers) != 1 or readers[0].op != "reshape" or node.outputs[0] in graph.outputs:
        return None
    reshape = readers[0]
    before, after = graph.tensors[node.outputs[0]].shape, graph.tensors[reshape.outputs[0]].shape
    if len(after) != len(before) + 1 or tuple(after[:-2]) != tuple(before[:-1]) or after[-2] * after[-1] != before[-1] or after[-2] < 2:
        return None
    return reshape, int(after[-2]), int(after[-1])


def _attention(graph: Graph, consumers: dict[str, list[Node]]) -> list[Block]:
    """Attention blocks: projections split into heads that meet, followed to the output projection."""
    splits = {node.name: found for node in graph.nodes if (found := _split(graph, node, consumers)) is not None}
    by_name = {node.name: node for node in graph.nodes}
    blocks: list[Block] = []
    claimed: set[str] = set()
    for name, (reshape, heads, _) in splits.items():
        if name in claimed:
            continue
        walk = _Heads(graph, consumers, heads, Block("heads", heads))
        ok, members = walk.carry(reshape.outputs[0], _head_axis(graph, reshape)), [name]
        grew = True
        while grew:  # the other projections whose heads meet these (the key, the value)
            grew = False
            for other, (other_reshape, other_heads, _) in splits.items():
                if other in members or other in claimed or not _meets(walk, other_reshape, consumers):
                    continue
                ok = ok and other_heads == heads and walk.carry(other_reshape.outputs[0], _head_axis(graph, other_reshape))
                members.append(other)
                grew = True
        claimed.update(members)
        if not ok or not walk.block.columns or not walk.closed():
            continue
        for member in members:
            reshape_node, _, size = splits[member]
            layer = by_name[member]
            walk.block.rows.append((layer, size))
            walk.block.tensors[layer.outputs[0]] = (-1, size)
            walk.block.targets.append((reshape_node, len(graph.tensors[reshape_node.outputs[0]].shape) - 3, 1))
        blocks.append(walk.block)
    return blocks


def _head_axis(graph: Graph, reshape: Node) -> int:
    return len(graph.tensors[reshape.outputs[0]].shape) - 2


def _meets(walk: _Heads, reshape: Node, consumers: dict[str, list[Node]]) -> bool:
    """Whether a projection's heads reach a node that the walk already holds (a product with
    the query's, say), following the ops that keep heads apart."""
    frontier, seen = [reshape.outputs[0]], set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for reader in consumers.get(name, []):
            if any(other in walk.axes for other in reader.inputs if other != name):
                return True
            if reader.op in ("transpose", "softmax", "matmul", *ELEMENTWISE):
                frontier.append(reader.outputs[0])
    return False


def block_importance(graph: Graph, block: Block, scores: dict[str, np.ndarray] | None = None, normalize: bool = True) -> np.ndarray:
    """Per unit, the saliency (or l2 norm) of its rows and columns, each layer normalised by
    its mean; with ``normalize`` False, as they are (comparable across blocks of one shape,
    for one threshold over all of them)."""
    total = np.zeros(block.count)
    parts = [(node, size, 1) for node, size in block.rows] + [(node, size, 0) for node, size in block.columns]
    for node, size, across in parts:
        weight = graph.const(node.inputs[1]).astype(np.float64)
        values = scores[node.inputs[1]].astype(np.float64) if scores is not None else weight**2
        per_unit = values.sum(axis=across).reshape(block.count, size).sum(axis=1)  # a row's or a column's, per unit
        per_unit = np.sqrt(per_unit) if scores is None else per_unit  # without saliency: the l2 norm
        mean = per_unit.mean()
        total += per_unit / mean if mean > 0 and normalize else per_unit
    return total


def remove_block(graph: Graph, block: Block, keep: np.ndarray) -> None:
    """Cut ``block`` to the units ``keep`` (sorted indices), in place."""
    count = len(keep)

    def positions(size: int) -> np.ndarray:
        return (keep[:, None] * size + np.arange(size)[None]).reshape(-1)

    for node, size in block.rows:
        rows = positions(size)
        node.inputs[1] = _constant(graph, node.inputs[1], lambda w, r=rows: w[r])
        if len(node.inputs) > 2 and node.inputs[2]:
            node.inputs[2] = _constant(graph, node.inputs[2], lambda b, r=rows: b[r])
    for node, size in block.columns:
        node.inputs[1] = _constant(graph, node.inputs[1], lambda w, c=positions(size): w[:, c])
    for name, (axis, size) in block.tensors.items():
        shape = list(graph.tensors[name].shape)
        shape[axis] = count * size
        graph.tensors[name].shape = tuple(shape)
    for node, index, size in block.targets:
        target = list(node.attrs["shape"])
        target[index] = count * size
        node.attrs["shape"] = target
    for node, name, axis in block.constants:
        new = _constant(graph, name, lambda c, a=axis: np.take(c, keep, axis=a))
        node.inputs = [new if n == name else n for n in node.inputs]


def _constant(graph: Graph, name: str, cut: Any) -> str:
    data = np.ascontiguousarray(cut(graph.const(name)), dtype=np.float32)
    new = name if name.endswith(".pruned") else f"{name}.pruned"
    graph.tensors[new] = Tensor(new, tuple(data.shape), data)
    return new
