"""Lite residual modules (the ``+lite`` part of a fine-tune strategy): small branches added to
a frozen model that train beside its biases (Cai et al., "TinyTL: Reduce Memory, Not
Parameters for Efficient On-Device Learning", NeurIPS 2020, section 3.2).

Each branch reads a block's input at half its resolution and adds its result to the block's
output: 2x2 average pooling, a 3x3 group convolution (groups of 8 channels) with ReLU, a 1x1
convolution to the block's channels, and, when the block keeps its resolution, a nearest
upsampling back to it. The 1x1 convolution starts at zero, so training starts from the model
itself. Its activations are a quarter of the block's, which is what makes the branch cheap to
train. Unlike LoRA, a branch cannot be folded into the weights: it stays in both artifacts
as ordinary ops, and the report counts what it adds.

The blocks are the model's residual additions (the branch joins the added path, from the
skip's tensor), or, in a model without any, its convolutions that are not depthwise, after
the first. A block whose input has an odd side, or whose output is neither the input's size
nor half of it, gets no branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.ir.graph import Graph, Node, Tensor

META_KEY = "lite_residual"  # graph.meta: the branches' convolutions, so that a second fine-tune adds none
GROUP_CHANNELS = 8


@dataclass(frozen=True)
class Point:
    """Where a branch goes: from ``source`` (the block's input) into ``target`` (an input of
    ``consumer``, or every use of it when ``consumer`` is None), named after ``name``."""

    name: str
    source: str
    target: str
    consumer: Node | None
    after: Node  # the branch's nodes go right after this one


def attach_points(graph: Graph) -> list[Point]:
    producers = {out: node for node in graph.nodes for out in node.outputs}
    points = []
    for node in graph.nodes:
        if node.op != "add" or len(node.inputs) != 2 or any(graph.tensors[name].is_const for name in node.inputs):
            continue
        skip, path = _skip_and_path(node, producers)
        if skip is not None and path is not None and _image(graph, skip) and _image(graph, path):
            points.append(Point(node.name, skip, path, node, producers[path]))
    if points:
        return points
    convs = [node for node in graph.nodes if node.op == "conv2d"]
    for node in convs[1:]:
        if node.attrs["groups"] == 1:
            points.append(Point(node.name, node.inputs[0], node.outputs[0], None, node))
    return points


def _skip_and_path(add: Node, producers: dict[str, Node]) -> tuple[str | None, str | None]:
    """The residual's skip input (produced earlier) and the block's path (the later producer)."""
    first, second = add.inputs
    order = {name: index for index, name in enumerate(producers)}
    if first not in order or second not in order:
        return None, None
    return (first, second) if order[first] < order[second] else (second, first)


def _image(graph: Graph, name: str) -> bool:
    return len(graph.tensors[name].shape) == 4


def add_lite_residuals(graph: Graph, seed: int) -> list[str]:
    """A lite residual branch at every attach point (in place); the branches' convolutions.
    A graph that has branches already gets none."""
    if META_KEY in graph.meta:
        return list(graph.meta[META_KEY]["layers"])
    rng = np.random.default_rng(seed)
    layers: list[str] = []
    added = 0
    for point in attach_points(graph):
        source, target = graph.tensors[point.source].shape, graph.tensors[point.target].shape
        _, channels, height, width = source
        half, size = (height // 2, width // 2), (target[2], target[3])
        if height % 2 or width % 2 or size not in ((height, width), half):
            continue
        nodes, convs = _branch(graph, point, channels, target[1], half, size, rng)
        at = graph.nodes.index(point.after) + 1
        graph.nodes[at:at] = nodes
        layers += convs
        added += sum(graph.const(name).size for node in nodes if node.op == "conv2d" for name in node.inputs[1:])
    graph.meta[META_KEY] = {"layers": layers, "parameters": added}
    return layers


def _branch(
    graph: Graph, point: Point, channels: int, outputs: int, half: tuple[int, int], size: tuple[int, int], rng: np.random.Generator
) -> tuple[list[Node], list[str]]:
    """The branch's nodes, its tensors added to ``graph``, and the users of ``point.target``
    switched to the sum."""
    prefix = f"{point.name}.lite"
    groups = channels // GROUP_CHANNELS if channels % GROUP_CHANNELS == 0 else 1
    fan_in = channels // groups * 9
    bound = math.sqrt(6.0 / fan_in)  # He uniform for the ReLU that follows
    weight1 = rng.uniform(-bound, bound, (channels, channels // groups, 3, 3)).astype(np.float32)
    consts = {
        f"{prefix}.conv1.weight": weight1,
        f"{prefix}.conv1.bias": np.zeros(channels, np.float32),
        f"{prefix}.conv2.weight": np.zeros((outputs, channels, 1, 1), np.float32),
        f"{prefix}.conv2.bias": np.zeros(outputs, np.float32),
    }
    for name, value in consts.items():
        graph.tensors[name] = Tensor(name, value.shape, value)
    shapes = {
        f"{prefix}.pool": (1, channels, *half),
        f"{prefix}.conv1": (1, channels, *half),
        f"{prefix}.conv2": (1, outputs, *half),
        f"{prefix}.up": (1, outputs, *size),
        f"{prefix}.add": (1, outputs, *size),
    }
    for name, shape in shapes.items():
        graph.tensors[name] = Tensor(name, shape)
    conv = {"stride": [1, 1], "dilation": [1, 1]}
    nodes = [
        Node("avgpool2d", f"{prefix}.pool", [point.source], [f"{prefix}.pool"], {"kernel": [2, 2], "stride": [2, 2], "pads": [0] * 4}),
        Node(
            "conv2d",
            f"{prefix}.conv1",
            [f"{prefix}.pool", f"{prefix}.conv1.weight", f"{prefix}.conv1.bias"],
            [f"{prefix}.conv1"],
            {**conv, "pads": [1] * 4, "groups": groups, "act": "relu"},
        ),
        Node(
            "conv2d",
            f"{prefix}.conv2",
            [f"{prefix}.conv1", f"{prefix}.conv2.weight", f"{prefix}.conv2.bias"],
            [f"{prefix}.conv2"],
            {**conv, "pads": [0] * 4, "groups": 1},
        ),
    ]
    branch = f"{prefix}.conv2"
    if size != half:
        nodes.append(
            Node("resize", f"{prefix}.up", [branch], [f"{prefix}.up"], {"mode": "nearest", "align_corners": False, "size": list(size)})
        )
        branch = f"{prefix}.up"
    else:
        del graph.tensors[f"{prefix}.up"]
    total = f"{prefix}.add"
    _switch_uses(graph, point, total)
    nodes.append(Node("add", total, [point.target, branch], [total], {}))
    return nodes, [f"{prefix}.conv1", f"{prefix}.conv2"]


def _switch_uses(graph: Graph, point: Point, total: str) -> None:
    users = [point.consumer] if point.consumer is not None else [node for node in graph.nodes if point.target in node.inputs]
    for node in users:
        node.inputs = [total if name == point.target else name for name in node.inputs]
    if point.consumer is None:
        graph.outputs = [total if name == point.target else name for name in graph.outputs]


def describe(graph: Graph) -> dict[str, Any]:
    """The report's account of the branches: how many, and the parameters they add to the artifacts."""
    meta = graph.meta.get(META_KEY, {"layers": [], "parameters": 0})
    return {"modules": len(meta["layers"]) // 2, "parameters_added": meta["parameters"]}
