"""Physical channel removal: once the units to remove are chosen, every weight, attribute and
shape that follows the channels is cut, each by the role the channel map gave its node."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgetune.ir.graph import Graph, Node, Tensor
from edgetune.prune.groups import ChannelMap, channel_axis


@dataclass
class _Cut:
    graph: Graph
    keep: dict[str, np.ndarray]  # tensor -> the channel positions it keeps
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> output rows kept (where cut)
    done: dict[str, str] = field(default_factory=dict)  # constant -> its cut copy (shared weights are cut once)

    def rows(self, name: str) -> np.ndarray:
        return self.keep[name]

    def changed(self, name: str) -> bool:
        return name in self.keep and len(self.keep[name]) < self.graph.tensors[name].shape[1]

    def constant(self, name: str, cut: Callable[[np.ndarray], np.ndarray]) -> str:
        if name not in self.done:
            new = name if name.endswith(".pruned") else f"{name}.pruned"
            data = np.ascontiguousarray(cut(self.graph.const(name)), dtype=np.float32)
            self.graph.tensors[new] = Tensor(new, tuple(data.shape), data)
            self.done[name] = new
        return self.done[name]

    def out_rows(self, node: Node) -> np.ndarray | None:
        """The output rows ``node`` keeps, with its bias cut to them; None if it keeps all."""
        if not self.changed(node.outputs[0]):
            return None
        rows = self.rows(node.outputs[0])
        if len(node.inputs) > 2:
            node.inputs[2] = self.constant(node.inputs[2], lambda b: b[rows])
        self.kept[node.name] = rows
        return rows


def _producer(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """A conv (or transposed conv, stored [out, in, ...]) or linear layer: rows and columns."""
    rows = cut.out_rows(node)
    columns = cut.rows(node.inputs[0]) if cut.changed(node.inputs[0]) else None

    def sliced(weight: np.ndarray) -> np.ndarray:
        weight = weight if rows is None else weight[rows]
        return weight if columns is None else weight[:, columns]

    if rows is not None or columns is not None:
        node.inputs[1] = cut.constant(node.inputs[1], sliced)


def _grouped(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """A grouped conv, weight [out, in / groups, ...]: each output row keeps the input channels
    its own segment keeps (the same count in every segment: the grouping checked it)."""
    if not (cut.changed(node.inputs[0]) or cut.changed(node.outputs[0])):
        return
    groups = int(node.attrs["groups"])
    weight = cut.graph.const(node.inputs[1])
    per_in, per_out = cut.graph.tensors[node.inputs[0]].shape[1] // groups, weight.shape[0] // groups
    rows = cut.out_rows(node)
    rows = np.arange(weight.shape[0]) if rows is None else rows
    columns = cut.rows(node.inputs[0]) if node.inputs[0] in cut.keep else np.arange(per_in * groups)
    picked = [columns[columns // per_in == row // per_out] % per_in for row in rows]
    node.inputs[1] = cut.constant(node.inputs[1], lambda w: np.stack([w[row, cols] for row, cols in zip(rows, picked)]))


def _depthwise(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    rows = cut.out_rows(node)
    if rows is not None:
        node.inputs[1] = cut.constant(node.inputs[1], lambda w: w[rows])
        node.attrs["groups"] = len(rows)


def _channelwise(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    if cut.changed(node.outputs[0]):
        rows = cut.rows(node.outputs[0])
        node.inputs[1] = cut.constant(node.inputs[1], lambda slopes: slopes[rows])


def _constant(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """A per-channel constant operand of an elementwise op (a bias, a scale)."""
    if not cut.changed(node.outputs[0]):
        return
    rows, rank = cut.rows(node.outputs[0]), len(cut.graph.tensors[node.outputs[0]].shape)
    for i, name in enumerate(node.inputs):
        data = cut.graph.tensors[name].data
        axis = channel_axis(data.shape, rank) if data is not None else None
        if data is not None and axis is not None and data.shape[axis] > 1:
            node.inputs[i] = cut.constant(name, functools.partial(np.take, indices=rows, axis=axis))


def _reshape(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """A flatten: its target's first axis (the channels, or channels times features) follows."""
    if cut.changed(node.outputs[0]):
        node.attrs["shape"] = [len(cut.rows(node.outputs[0])), *node.attrs["shape"][1:]]


def _slice(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """A range of the channels: its ends move to where the kept channels now sit."""
    if cut.changed(node.inputs[0]):
        kept = cut.rows(node.inputs[0])
        node.attrs["start"] = int(np.searchsorted(kept, node.attrs["start"]))
        node.attrs["end"] = int(np.searchsorted(kept, node.attrs["end"]))


def _shuffle(cut: _Cut, node: Node, helpers: tuple[Node, ...]) -> None:
    """reshape [g, C/g, ...], transpose, reshape [C, ...]: C shrinks, g stays."""
    if not cut.changed(node.inputs[0]):
        return
    swap, back = helpers
    channels = len(cut.rows(node.inputs[0]))
    groups, rest = node.attrs["shape"][0], node.attrs["shape"][2:]
    node.attrs["shape"] = [groups, channels // groups, *rest]
    back.attrs["shape"] = [channels, *back.attrs["shape"][1:]]
    batch = cut.graph.tensors[node.outputs[0]].shape[0]
    cut.graph.tensors[node.outputs[0]].shape = (batch, groups, channels // groups, *rest)
    cut.graph.tensors[swap.outputs[0]].shape = (batch, channels // groups, groups, *rest)


ROLES: dict[str, Callable[[_Cut, Node, tuple[Node, ...]], None]] = {
    "producer": _producer,
    "grouped": _grouped,
    "depthwise": _depthwise,
    "channelwise": _channelwise,
    "constant": _constant,
    "reshape": _reshape,
    "slice": _slice,
    "shuffle": _shuffle,
}


def remove_units(graph: Graph, cmap: ChannelMap, removed: set[int]) -> dict[str, np.ndarray]:
    """Remove every channel whose unit is in ``removed``, in place; each cut layer's kept
    output rows (original indices)."""
    gone = np.zeros(len(cmap.unit), dtype=bool)
    gone[list(removed)] = True
    keep = {name: np.flatnonzero(~gone[cmap.unit[labels]]) for name, labels in cmap.labels.items()}
    cut = _Cut(graph, keep)
    for role, node, helpers in cmap.roles:  # weights and attributes first: they read the old shapes
        ROLES[role](cut, node, helpers)
    for name, positions in keep.items():
        tensor = graph.tensors[name]
        if len(positions) < tensor.shape[1]:
            tensor.shape = (tensor.shape[0], len(positions), *tensor.shape[2:])
    return cut.kept
