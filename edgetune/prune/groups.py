"""Channel dependency groups on the IR graph.

Every activation's channel axis (axis 1) is a "channel space". Ops that keep channel c at
index c (activations, pooling, a mean over spatial axes, depthwise convs, elementwise ops
between activations, a flatten of a 1x1 map) join the spaces of their inputs and outputs; convs and linear layers
start a new space at their output and can drop input channels. A concatenation along the
channels starts a composite space: each part is pruned with its own group, and the
composite's readers drop the matching columns (the part's offset plus its removed channels).
Spaces touched by anything else (graph input and output, transposes, softmax, ...) are kept
whole, and so are the parts of a composite that is kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgetune.ir.graph import ACTIVATION_OPS, Graph, Node, depthwise_multiplier

PASS_THROUGH = ACTIVATION_OPS | {"global_avgpool", "avgpool2d", "maxpool2d", "resize"}


@dataclass(eq=False)  # groups are compared by identity: they point at each other through feeds
class Group:
    """Tensors that share channel indices, and the nodes whose weights follow them."""

    tensors: list[str] = field(default_factory=list)
    producers: list[Node] = field(default_factory=list)  # conv/linear whose output rows are the channels
    depthwise: list[Node] = field(default_factory=list)  # depthwise convs inside the group
    consumers: list[Node] = field(default_factory=list)  # conv/linear reading the channels as inputs
    reshapes: list[Node] = field(default_factory=list)  # flattens of a 1x1 map: their target shape follows
    channelwise: list[Node] = field(default_factory=list)  # ops with a constant per channel (a PReLU's slopes)
    feeds: list[tuple[Node, Group]] = field(default_factory=list)  # (concat, its composite group) this group is a part of
    blocked: bool = False
    protected: bool = False
    # Nodes whose pattern the grouping cannot follow (concatenation, transpose, ...): their
    # groups are kept whole only when the user allows it.
    unsupported: list[str] = field(default_factory=list)

    def channels(self, graph: Graph) -> int:
        return int(graph.tensors[self.tensors[0]].shape[1])


class _Spaces:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, *names: str) -> None:
        roots = [self.find(n) for n in names]
        for root in roots[1:]:
            self.parent[root] = roots[0]


def _is_flatten_of_1x1(graph: Graph, node: Node) -> bool:
    in_shape, out_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.outputs[0]].shape
    return len(in_shape) >= 2 and len(out_shape) == 2 and int(np.prod(in_shape[2:])) == 1 and out_shape[1] == in_shape[1]


def _keeps_leading_axes(graph: Graph, node: Node) -> bool:
    """A reshape of the axes after the channels only (``x.flatten(2)``): channel c stays at c."""
    in_shape, out_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.outputs[0]].shape
    return len(in_shape) >= 3 and len(out_shape) >= 3 and tuple(in_shape[:2]) == tuple(out_shape[:2])


@dataclass
class _Links:
    """What the walk over the graph found: joined spaces, kept-whole tensors, member roles."""

    graph: Graph
    spaces: _Spaces = field(default_factory=_Spaces)
    blocked: set[str] = field(default_factory=set)
    unsupported: dict[str, str] = field(default_factory=dict)  # tensor -> the node that blocks it
    roles: list[tuple[str, str, Node]] = field(default_factory=list)  # (tensor, role, node)
    concats: list[Node] = field(default_factory=list)  # concatenations along the channels

    def refuse(self, node: Node, tensors: list[str]) -> None:
        self.blocked.update(tensors)
        for name in tensors:
            self.unsupported.setdefault(name, f"{node.op} {node.name}")

    def activation(self, name: str) -> bool:
        tensor = self.graph.tensors.get(name)
        return tensor is not None and tensor.data is None and len(tensor.shape) >= 2

    def conv(self, node: Node) -> None:
        out = node.outputs[0]
        if node.attrs["groups"] == 1:
            self.roles += [(out, "producer", node), (node.inputs[0], "consumer", node)]
        elif depthwise_multiplier(self.graph, node) == 1:
            self.spaces.union(node.inputs[0], out)
            self.roles.append((out, "depthwise", node))
        else:
            self.refuse(node, [node.inputs[0], out])

    def linear(self, node: Node) -> None:
        if len(self.graph.tensors[node.outputs[0]].shape) != 2:  # over steps: its features are on the last axis
            self.refuse(node, [node.inputs[0], node.outputs[0]])
            return
        self.roles.append((node.outputs[0], "producer", node))
        if len(self.graph.tensors[node.inputs[0]].shape) == 2:
            self.roles.append((node.inputs[0], "consumer", node))
        else:
            self.refuse(node, [node.inputs[0]])

    def elementwise(self, node: Node) -> None:
        acts = [n for n in node.inputs if self.activation(n)]
        constants = [self.graph.tensors[n].data for n in node.inputs if not self.activation(n)]
        if any(c is not None and c.size > 1 for c in constants):  # a per-channel constant would need slicing too
            self.refuse(node, [*acts, node.outputs[0]])
        else:
            self.spaces.union(*acts, node.outputs[0])

    def keeps_channels(self, node: Node) -> bool:
        if node.op in PASS_THROUGH:
            return True
        if node.op == "mean":  # over spatial axes (x.mean((2, 3))): axis 1 stays the channels, kept or not
            axes = node.attrs["axes"]
            return 1 not in axes and (bool(node.attrs["keepdim"]) or all(axis > 1 for axis in axes))
        if node.op == "slice":  # a spatial crop keeps the channels; a slice of them is refused
            return bool(node.attrs["axis"] != 1)
        if node.op == "pad":
            return bool(node.attrs["pads"][1] == [0, 0])
        return False

    def link(self, node: Node) -> None:
        if node.op in ("conv2d", "conv_transpose2d"):  # a transposed conv's weight is [out, in, ...] too
            self.conv(node)
        elif node.op == "linear":
            self.linear(node)
        elif node.op in ("add", "sub", "mul"):
            self.elementwise(node)
        elif node.op == "prelu":
            self.spaces.union(node.inputs[0], node.outputs[0])
            if self.graph.const(node.inputs[1]).size > 1:
                self.roles.append((node.outputs[0], "channelwise", node))
        elif node.op == "concat" and node.attrs["axis"] == 1 and all(self.activation(n) for n in node.inputs):
            self.concats.append(node)  # the output starts its own (composite) space
        elif self.keeps_channels(node):
            self.spaces.union(node.inputs[0], node.outputs[0])
        elif node.op == "softmax":
            # Softmax ties its input and output channels; over the channel axis it also mixes
            # them, so such a group is kept whole (usually the classifier's output anyway).
            self.spaces.union(node.inputs[0], node.outputs[0])
            if node.attrs["axis"] == 1:
                self.refuse(node, [node.inputs[0], node.outputs[0]])
        elif node.op == "concat" and node.attrs["axis"] != 1 and all(self.activation(n) for n in node.inputs):
            self.spaces.union(*node.inputs, node.outputs[0])  # joined along another axis: the same channels
        elif node.op == "reshape" and (_is_flatten_of_1x1(self.graph, node) or _keeps_leading_axes(self.graph, node)):
            self.spaces.union(node.inputs[0], node.outputs[0])
            self.roles.append((node.outputs[0], "reshape", node))
        else:
            self.refuse(node, [*(n for n in node.inputs if self.activation(n)), node.outputs[0]])


def find_groups(graph: Graph) -> list[Group]:
    """The channel groups of ``graph`` that some conv or linear layer produces; ``blocked``
    groups must keep every channel."""
    links = _Links(graph)
    for name in graph.activations():
        if links.activation(name):
            links.spaces.find(name)
    for node in graph.nodes:
        links.link(node)
    links.blocked.update(graph.inputs)
    links.blocked.update(graph.outputs)

    groups: dict[str, Group] = {}
    for name in graph.activations():
        if links.activation(name):
            groups.setdefault(links.spaces.find(name), Group()).tensors.append(name)
    for name in links.blocked:
        if name in links.spaces.parent:
            groups[links.spaces.find(name)].blocked = True
    # Groups that reach the graph's input or output stay whole anyway: nothing to report there.
    structural = {links.spaces.find(n) for n in [*graph.inputs, *graph.outputs] if n in links.spaces.parent}
    for name, where in links.unsupported.items():
        root = links.spaces.find(name) if name in links.spaces.parent else None
        if root is not None and root not in structural and where not in groups[root].unsupported:
            groups[root].unsupported.append(where)
    for tensor, role, node in links.roles:
        group = groups[links.spaces.find(tensor)]
        bucket = {
            "producer": group.producers,
            "consumer": group.consumers,
            "depthwise": group.depthwise,
            "reshape": group.reshapes,
            "channelwise": group.channelwise,
        }[role]
        if node not in bucket:
            bucket.append(node)
    _link_composites(links, groups)
    return [g for g in groups.values() if g.producers]


def _link_composites(links: _Links, groups: dict[str, Group]) -> None:
    """Each concatenation's parts learn the composite they feed. A composite that is kept whole
    (or that a layer also writes into) keeps its parts whole, up through nested ones."""
    spaces = [links.spaces.find(node.outputs[0]) for node in links.concats]
    for node, space in zip(links.concats, spaces):
        composite = groups[space]
        # A layer's own channels added to the composite, or two concatenations joined (by an
        # add): no one offset maps each part's channels. Kept whole.
        if composite.producers or spaces.count(space) > 1 or _reached_twice(links, groups, node):
            composite.blocked = True
            composite.unsupported.append(f"concat {node.name}")
        for name in dict.fromkeys(node.inputs):
            part = groups[links.spaces.find(name)]
            if part is composite:
                composite.blocked = True
            elif not any(n is node and c is composite for n, c in part.feeds):
                part.feeds.append((node, composite))
    changed = True  # a composite kept whole keeps its parts whole, through nested ones
    while changed:
        changed = False
        for group in groups.values():
            whole = [composite for _, composite in group.feeds if composite.blocked]
            if whole and not group.blocked:
                group.blocked, changed = True, True
                group.unsupported += [u for c in whole for u in c.unsupported if u not in group.unsupported]


def _reached_twice(links: _Links, groups: dict[str, Group], concat: Node) -> bool:
    """Whether some group reaches ``concat`` by two routes (directly and through a nested
    concatenation, or through two): its columns would be cut twice."""
    composite_of = {links.spaces.find(node.outputs[0]): node for node in links.concats}

    def parts(node: Node) -> list[int]:
        found = []
        for root in dict.fromkeys(links.spaces.find(name) for name in node.inputs):
            inner = composite_of.get(root)
            found += parts(inner) if inner is not None and inner is not node else [id(groups[root])]
        return found

    reached = parts(concat)
    return len(reached) != len(set(reached))
