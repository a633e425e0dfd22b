"""Channel dependency groups on the IR graph, followed channel by channel.

Every channel (axis 1) of every activation carries a label. A conv or linear layer gives its
output channels fresh labels; the ops that move channels move their labels:

- ops that keep channel c at c (activations, pools, a spatial mean, depthwise convs, spatial
  slices, pads and transposes, a PReLU, a per-channel constant added or multiplied) pass them
  through;
- a concatenation along the channels concatenates its inputs' labels, and a slice of the
  channels (split, chunk, narrow) takes a range of them;
- a channel shuffle (reshape to [N, g, C/g, ...], swap axes 1 and 2, reshape back) permutes
  them, and a flatten to [N, C*H*W] repeats each channel's label over its features.

Ops that tie channels join labels into units, which are kept or removed whole: an add, sub,
mul or div of two activations joins the labels at each index; a channel shuffle joins each
row of g labels (removing part of a row would leave no reshape to write); layers that share
one weight (the steps of an unrolled GRU) join their rows and their columns. A group is the
units that share a producing layer: they are ranked and cut together. A grouped convolution
(not depthwise) reads and writes its channels in equal segments, so each segment of a group
it touches keeps the same number of units.

Labels touched by anything else (graph inputs and outputs, transposes, softmax over the
channels, ...) are kept, and so is every group holding one of them: a cut that cannot be
followed is never made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgetune.ir.graph import ACTIVATION_OPS, Graph, Node, depthwise_multiplier

PASS_THROUGH = ACTIVATION_OPS | {"global_avgpool", "avgpool2d", "maxpool2d", "resize"}
ELEMENTWISE = ("add", "sub", "mul", "div")


@dataclass
class ChannelMap:
    """Each activation's channel labels, the unit each label belongs to, and the nodes whose
    weights or attributes follow the channels (``(role, node, helpers)``)."""

    labels: dict[str, np.ndarray]
    unit: np.ndarray  # label -> its unit (a label that represents it)
    roles: list[tuple[str, Node, tuple[Node, ...]]]

    def units_of(self, tensor: str) -> np.ndarray:
        return self.unit[self.labels[tensor]]


@dataclass(eq=False)  # groups are compared by identity
class Group:
    """Units that share a producing layer, and the layers whose weights follow them."""

    cmap: ChannelMap
    units: list[int] = field(default_factory=list)  # in order of first appearance
    tensors: list[str] = field(default_factory=list)
    producers: list[Node] = field(default_factory=list)  # conv/linear whose output rows are the channels
    depthwise: list[Node] = field(default_factory=list)  # depthwise convs inside the group
    segments: list[list[list[int]]] = field(default_factory=list)  # per grouped conv side: unit indices per segment
    # Unit indices that reach the same slices, layer outputs and grouped-conv segments: each
    # keeps its share, so that no slice (a chunk that feeds one branch) is emptied.
    strata: list[list[int]] = field(default_factory=list)
    blocked: bool = False
    protected: bool = False
    # Nodes whose pattern the grouping cannot follow (a transpose, a strided slice, ...): the
    # group is kept whole only when the user allows it.
    unsupported: list[str] = field(default_factory=list)

    def channels(self, graph: Graph) -> int:
        return len(self.units)

    def indices(self, tensor: str) -> np.ndarray:
        """Per channel of ``tensor``, the index of its unit in ``units`` (-1: another group's)."""
        index = {unit: i for i, unit in enumerate(self.units)}
        return np.array([index.get(int(u), -1) for u in self.cmap.units_of(tensor)], dtype=np.int64)


def _is_flatten_of_1x1(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    return len(in_shape) >= 2 and len(out_shape) == 2 and int(np.prod(in_shape[2:])) == 1 and out_shape[1] == in_shape[1]


def _keeps_leading_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """A reshape of the axes after the channels only (``x.flatten(2)``): channel c stays at c."""
    return len(in_shape) >= 3 and len(out_shape) >= 3 and tuple(in_shape[:2]) == tuple(out_shape[:2])


def _is_flatten(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """[N, C, ...] to [N, C * ...]: each channel's features stay together, in order."""
    return len(in_shape) >= 3 and len(out_shape) == 2 and out_shape[1] == int(np.prod(in_shape[1:]))


def channel_axis(shape: tuple[int, ...], rank: int) -> int | None:
    """The axis of a constant of ``shape`` that broadcasts against the channel axis (1) of a
    ``rank``-dimensional activation; None if it has none."""
    axis = len(shape) - rank + 1
    return axis if 0 <= axis < len(shape) else None


@dataclass
class _Walk:
    """One pass over the graph in execution order, labelling channels and joining units."""

    graph: Graph
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str | None] = field(default_factory=dict)  # label -> the node that keeps it (None: structural)
    roles: list[tuple[str, Node, tuple[Node, ...]]] = field(default_factory=list)
    shared: dict[str, Node] = field(default_factory=dict)  # weight -> the first layer that reads it
    inside: set[int] = field(default_factory=set)  # ids of nodes already handled as part of a pattern
    readers: dict[str, list[Node]] = field(default_factory=dict)

    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, label: int) -> int:
        while self.parent[label] != label:
            self.parent[label] = self.parent[self.parent[label]]
            label = self.parent[label]
        return label

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def carries(self, name: str) -> bool:
        tensor = self.graph.tensors.get(name)
        return tensor is not None and tensor.data is None and len(tensor.shape) >= 2

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.graph.tensors[name].shape)

    def of(self, name: str) -> np.ndarray:
        if name not in self.labels:
            self.labels[name] = self.fresh(self.shape(name)[1])
        return self.labels[name]

    def keep(self, names: list[str], why: str | None) -> None:
        for name in names:
            if self.carries(name):
                for label in self.of(name).tolist():
                    self.blocked.setdefault(label, why)

    def refuse(self, node: Node) -> None:
        self.keep([*node.inputs, *node.outputs], f"{node.op} {node.name}")

    def same(self, node: Node) -> None:
        self.labels[node.outputs[0]] = self.of(node.inputs[0])

    def layer(self, node: Node, role: str) -> None:
        """A conv or linear layer: fresh output labels, unless it shares its weight with an
        earlier layer, whose rows and columns it then keeps in step with."""
        out = self.fresh(self.shape(node.outputs[0])[1])
        self.labels[node.outputs[0]] = out
        first = self.shared.setdefault(node.inputs[1], node)
        if first is not node:
            self.join(self.labels[first.outputs[0]], out)
            if self.carries(node.inputs[0]) and self.carries(first.inputs[0]):
                self.join(self.of(first.inputs[0]), self.of(node.inputs[0]))
        self.roles.append((role, node, ()))

    def conv(self, node: Node) -> None:
        groups = int(node.attrs["groups"])
        if groups == 1:
            self.layer(node, "producer")
        elif node.op == "conv2d" and depthwise_multiplier(self.graph, node) == 1:
            self.same(node)
            self.roles.append(("depthwise", node, ()))
        elif node.op == "conv2d" and depthwise_multiplier(self.graph, node) == 0:
            self.layer(node, "grouped")
        else:
            self.refuse(node)

    def linear(self, node: Node) -> None:
        if len(self.shape(node.outputs[0])) == 2 and len(self.shape(node.inputs[0])) == 2:
            self.layer(node, "producer")
        else:  # over steps or tokens: its features are on the last axis
            self.refuse(node)

    def elementwise(self, node: Node) -> None:
        out = self.shape(node.outputs[0])
        constants = [self.graph.tensors[n].data for n in node.inputs if not self.carries(n)]
        axes = [channel_axis(c.shape, len(out)) for c in constants if c is not None]
        acts = [n for n in node.inputs if self.carries(n)]
        aligned = [n for n in acts if len(self.shape(n)) == len(out) and self.shape(n)[1] == out[1]]
        spread = [n for n in acts if len(self.shape(n)) == len(out) and self.shape(n)[1] == 1 != out[1]]
        # A constant with another channel count, or a [N, C] operand against [N, C, H, W]
        # (which broadcasts C against W), cannot follow a cut.
        if any(axis is not None and c.shape[axis] not in (1, out[1]) for c, axis in zip(constants, axes) if c is not None):
            self.refuse(node)
            return
        if not aligned or len(aligned) + len(spread) != len(acts):
            self.refuse(node)
            return
        if any(axis is not None and c.shape[axis] == out[1] > 1 for c, axis in zip(constants, axes) if c is not None):
            self.roles.append(("constant", node, ()))  # a per-channel constant (a bias, a scale) is cut too
        self.keep(spread, None)  # one channel broadcast over all: nothing to cut there
        for name in aligned[1:]:
            self.join(self.of(aligned[0]), self.of(name))
        self.labels[node.outputs[0]] = self.of(aligned[0])

    def keeps_channels(self, node: Node) -> bool:
        if node.op in PASS_THROUGH:
            return True
        if node.op == "mean":  # over spatial axes (x.mean((2, 3))): axis 1 stays the channels, kept or not
            axes = node.attrs["axes"]
            return 1 not in axes and (bool(node.attrs["keepdim"]) or all(axis > 1 for axis in axes))
        if node.op == "slice":
            return bool(node.attrs["axis"] != 1)
        if node.op == "pad":
            return bool(node.attrs["pads"][1] == [0, 0])
        if node.op == "transpose":  # of the axes after the channels (H and W swapped)
            return bool(list(node.attrs["perm"][:2]) == [0, 1])
        return node.op == "softmax"  # over the channels it mixes them: kept whole in `link`

    def concat(self, node: Node) -> None:
        if not all(self.carries(n) for n in node.inputs):
            self.refuse(node)
        elif node.attrs["axis"] == 1:
            self.labels[node.outputs[0]] = np.concatenate([self.of(n) for n in node.inputs])
        else:  # joined along another axis: the same channels
            for name in node.inputs[1:]:
                self.join(self.of(node.inputs[0]), self.of(name))
            self.same(node)

    def channel_slice(self, node: Node) -> None:
        if node.attrs["step"] != 1:  # a strided pick leaves no range to write after a cut
            self.refuse(node)
            return
        self.labels[node.outputs[0]] = self.of(node.inputs[0])[node.attrs["start"] : node.attrs["end"]]
        self.roles.append(("slice", node, ()))

    def reshape(self, node: Node) -> None:
        if self.shuffle(node):
            return
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        if _is_flatten_of_1x1(in_shape, out_shape) or _keeps_leading_axes(in_shape, out_shape):
            self.same(node)
        elif _is_flatten(in_shape, out_shape):
            self.labels[node.outputs[0]] = np.repeat(self.of(node.inputs[0]), int(np.prod(in_shape[2:])))
        else:
            self.refuse(node)
            return
        self.roles.append(("reshape", node, ()))

    def shuffle(self, node: Node) -> bool:
        """``x.view(N, g, C // g, ...).transpose(1, 2).reshape(N, C, ...)``: the channels
        permuted, and each row of g channels joined into one unit."""
        swap = self.readers.get(node.outputs[0], [])
        back = self.readers.get(swap[0].outputs[0], []) if len(swap) == 1 else []
        in_shape, split = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        if not (len(back) == 1 and swap[0].op == "transpose" and back[0].op == "reshape" and len(in_shape) >= 2):
            return False
        perm = list(swap[0].attrs["perm"])
        if not (
            len(split) == len(in_shape) + 1
            and split[1] * split[2] == in_shape[1]
            and split[3:] == in_shape[2:]
            and perm == [0, 2, 1, *range(3, len(split))]
            and self.shape(back[0].outputs[0]) == in_shape
        ):
            return False
        rows = self.of(node.inputs[0]).reshape(split[1], split[2]).T
        for row in rows:
            self.join(row[:1].repeat(len(row) - 1), row[1:])
        self.labels[back[0].outputs[0]] = rows.reshape(-1)
        self.inside.update({id(swap[0]), id(back[0])})
        self.roles.append(("shuffle", node, (swap[0], back[0])))
        return True

    def link(self, node: Node) -> None:
        if id(node) in self.inside:
            return
        if node.op in ("conv2d", "conv_transpose2d"):  # a transposed conv's weight is [out, in, ...] too
            self.conv(node)
        elif node.op == "linear":
            self.linear(node)
        elif node.op in ELEMENTWISE:
            self.elementwise(node)
        elif node.op == "prelu":
            self.same(node)
            if self.graph.const(node.inputs[1]).size > 1:
                self.roles.append(("channelwise", node, ()))
        elif node.op == "concat":
            self.concat(node)
        elif node.op == "slice" and node.attrs["axis"] == 1 and self.carries(node.inputs[0]):
            self.channel_slice(node)
        elif self.keeps_channels(node) and self.carries(node.inputs[0]) and self.carries(node.outputs[0]):
            self.same(node)
            if node.op == "softmax" and node.attrs["axis"] == 1:
                self.keep(node.inputs, f"{node.op} {node.name}")
        elif node.op == "reshape" and self.carries(node.inputs[0]) and self.carries(node.outputs[0]):
            self.reshape(node)
        else:
            self.refuse(node)


def channel_map(graph: Graph) -> tuple[ChannelMap, dict[int, str | None], set[int]]:
    """Label every activation's channels; the map, the units kept whole (with the node that
    keeps each, or None) and the units of the graph's inputs and outputs."""
    walk = _Walk(graph, readers=graph.consumers())
    for name in graph.inputs:
        if walk.carries(name):
            walk.of(name)
    for node in graph.nodes:
        walk.link(node)
    walk.keep([*graph.inputs, *graph.outputs], None)
    unit = np.array([walk.find(label) for label in range(len(walk.parent))], dtype=np.int64)
    kept: dict[int, str | None] = {}
    for label, why in walk.blocked.items():
        root = int(unit[label])
        if kept.get(root) is None:  # a reason beats none
            kept[root] = why
    ends = {int(u) for name in [*graph.inputs, *graph.outputs] if name in walk.labels for u in unit[walk.labels[name]]}
    return ChannelMap(walk.labels, unit, walk.roles), kept, ends


def find_groups(graph: Graph) -> list[Group]:
    """The channel groups of ``graph`` that some conv or linear layer produces; ``blocked``
    groups must keep every channel."""
    cmap, kept, ends = channel_map(graph)
    layers = [node for role, node, _ in cmap.roles if role in ("producer", "grouped")]
    tie: dict[int, int] = {}  # unit -> a unit of the same group (the units a layer writes are one group)

    def root(unit: int) -> int:
        while tie.setdefault(unit, unit) != unit:
            unit = tie[unit]
        return unit

    for node in layers:
        units = cmap.units_of(node.outputs[0]).tolist()
        first = root(units[0])
        for unit in units[1:]:
            if root(unit) != first:
                tie[root(unit)] = first
    groups: dict[int, Group] = {}
    seen: dict[int, None] = {}
    for node in layers:
        units = cmap.units_of(node.outputs[0]).tolist()
        group = groups.setdefault(root(units[0]), Group(cmap))
        group.producers.append(node)
        fresh = [u for u in dict.fromkeys(units) if u not in seen]
        seen.update(dict.fromkeys(fresh))
        group.units += fresh
    for group in groups.values():
        reasons = [kept[u] for u in group.units if u in kept]
        group.blocked = bool(reasons)
        if not ends.intersection(group.units):  # groups at the graph's ends stay whole anyway
            group.unsupported = sorted({why for why in reasons if why is not None})
        _collect_members(cmap, group)
    return list(groups.values())


def _collect_members(cmap: ChannelMap, group: Group) -> None:
    """The tensors, depthwise convs and grouped-conv segments that hold ``group``'s units. A
    grouped conv whose segments cannot each keep the same share keeps the group whole."""
    mine = set(group.units)
    group.tensors = [name for name, labels in cmap.labels.items() if mine.intersection(cmap.unit[labels].tolist())]
    signature: list[list[tuple[object, ...]]] = [[] for _ in group.units]
    for role, node, _ in cmap.roles:
        if role == "depthwise" and mine.intersection(cmap.units_of(node.outputs[0]).tolist()):
            group.depthwise.append(node)
        if role in ("slice", "producer", "grouped"):
            for index in set(group.indices(node.outputs[0]).tolist()) - {-1}:
                signature[index].append((id(node),))
        if role != "grouped":
            continue
        for side in (node.inputs[0], node.outputs[0]):
            if side not in cmap.labels or not mine.intersection(cmap.units_of(side).tolist()):
                continue
            split = np.split(group.indices(side), int(node.attrs["groups"]))
            segments = sorted(sorted(part.tolist()) for part in split)
            if not _balanced(split, len(group.units)):
                group.blocked = True
                group.unsupported.append(f"conv2d {node.name} (grouped: its groups would keep unequal channels)")
            group.segments.append(segments)
            for k, segment in enumerate(segments):
                for index in segment:
                    signature[index].append((id(node), side, k))
    strata: dict[tuple[tuple[object, ...], ...], list[int]] = {}
    for index, mark in enumerate(signature):
        strata.setdefault(tuple(mark), []).append(index)
    group.strata = list(strata.values())


def _balanced(split: list[np.ndarray], units: int) -> bool:
    """Whether a grouped conv's segments can each keep the same number of the group's units:
    every unit in exactly one segment, once, and every segment the same size."""
    flat = np.concatenate(split)
    return bool((flat >= 0).all() and len(set(flat.tolist())) == len(flat) == units and len({len(s) for s in split}) == 1)
