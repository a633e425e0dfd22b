"""Cross-layer equalization with high-bias absorption (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019, sections 4.1 and 4.2).

For two layers A -> B where B alone reads A's output, and a positive-homogeneous activation
between them (none or ReLU: ``act(z / s) * s == act(z)``), dividing A's output channel i by
s_i and multiplying B's input channel i by s_i leaves the model unchanged. Choosing
``s_i = sqrt(r_A,i / r_B,i)`` (r: the channel's largest absolute weight) gives both layers the
same per-channel ranges, so one per-tensor scale fits every channel: depthwise layers stop
losing their small channels to rounding.

ReLU6 is not homogeneous: ``relu6(z / s) * s`` clamps at 6 * s. Rather than replace ReLU6 by
ReLU (which changes the model wherever it saturates), the scales here respect the clamp on
the calibration data: a channel that reaches 6 keeps its scale, and a channel that stays
below 6 may be scaled up only until its largest observed value, with a margin, reaches 6.

High-bias absorption then moves a channel's guaranteed positive offset c (the smallest
pre-activation value observed, when it is above 0) from A's bias into B's bias:
``act(z - c) + c == act(z)`` while z >= c, and B's bias grows by ``W_B . c``. That is exact only
when B reads no padding, so it is done into 1x1 unpadded convolutions and linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, Tensor, depthwise_multiplier
from edgetune.quantize.layerwise import LayerInputs, walk
from edgetune.timing import timed

ROUNDS = 20
# A channel below the ReLU6 clamp may be scaled up until its largest calibration value,
# times this margin, reaches the clamp: data a little beyond the calibration set stays exact.
CLAMP_MARGIN = 1.5
RELU6_CLAMP = 6.0
SCALE_LIMITS = (1e-4, 1e4)
STATS_BATCH = 16


@dataclass
class Pair:
    first: Node
    second: Node


@dataclass
class EqualizeResult:
    pairs: int = 0
    absorbed_channels: int = 0
    clamp_limited_channels: int = 0
    weight_range_spread: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spreads = [after / before for before, after in self.weight_range_spread.values() if before > 0]
        return {
            "pairs": self.pairs,
            "absorbed_channels": self.absorbed_channels,
            "clamp_limited_channels": self.clamp_limited_channels,
            "median_spread_ratio": float(np.median(spreads)) if spreads else None,
            "note": "spread: a layer's largest per-channel weight range over its median one; ratio after/before",
        }


def _plain_or_depthwise(node: Node, graph: Graph) -> bool:
    return node.op == "linear" or node.attrs["groups"] == 1 or depthwise_multiplier(graph, node) == 1


def find_pairs(graph: Graph) -> list[Pair]:
    """Weighted layer pairs A -> B that equalization may rescale."""
    consumers = graph.consumers()
    producers = graph.producers()
    pairs = []
    for second in graph.nodes:
        if second.op not in WEIGHTED_OPS or second.op == "conv_transpose2d":
            continue  # a transposed conv sums a varying number of taps per output: no bias to absorb into
        first = producers.get(second.inputs[0])
        if first is None or first.op != second.op or first.act not in ("none", "relu", "relu6"):
            continue
        if second.inputs[0] in graph.outputs or len(consumers[second.inputs[0]]) != 1:
            continue
        if any(len(graph.tensors[n.outputs[0]].shape) == 3 for n in (first, second)):
            continue  # features on the last axis: the per-channel statistics read axis 1
        if _plain_or_depthwise(first, graph) and _plain_or_depthwise(second, graph):
            pairs.append(Pair(first, second))
    return pairs


def preact_ranges(graph: Graph, samples: np.ndarray, nodes: list[Node]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel min and max of each node's output before its fused activation."""
    wanted = {node.name for node in nodes}
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def visit(inputs: LayerInputs) -> None:
        node, z = inputs.node, inputs.z_float
        if node.name not in wanted:
            return
        axes = [0, *range(2, z.ndim)]
        low, high = torch.amin(z, dim=axes).numpy(), torch.amax(z, dim=axes).numpy()
        if node.name in ranges:
            low, high = np.minimum(ranges[node.name][0], low), np.maximum(ranges[node.name][1], high)
        ranges[node.name] = (low, high)

    for start in range(0, len(samples), STATS_BATCH):
        walk(graph, samples[start : start + STATS_BATCH], visit, quantized=False)
    return ranges


def _channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(weight), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1)  # type: ignore[no-any-return]


def _input_axis(node: Node, graph: Graph) -> int:
    """The weight axis that follows the layer's input channels."""
    return 0 if node.op == "conv2d" and depthwise_multiplier(graph, node) == 1 else 1


def _spread(ranges: np.ndarray) -> float:
    median = float(np.median(ranges))
    return float(ranges.max()) / median if median > 0 else 0.0


def ensure_bias(graph: Graph, node: Node) -> str:
    if len(node.inputs) > 2 and node.inputs[2]:
        return node.inputs[2]
    channels = graph.const(node.inputs[1]).shape[0]
    name = f"{node.name}.bias"
    while name in graph.tensors:
        name += "_"
    graph.tensors[name] = Tensor(name, (channels,), np.zeros(channels, np.float32))
    node.inputs[2:] = [name]
    return name


def _set(graph: Graph, name: str, value: np.ndarray) -> None:
    graph.tensors[name].data = value.astype(np.float32)


def _scale_bounds(first: Node, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest cumulative scale each of A's channels may take (see the module note)."""
    low = np.full(high.shape, SCALE_LIMITS[0])
    top = np.full(high.shape, SCALE_LIMITS[1])
    if first.act == "relu6":
        saturating = high >= RELU6_CLAMP
        low = np.where(saturating, 1.0, np.maximum(low, np.minimum(1.0, CLAMP_MARGIN * high / RELU6_CLAMP)))
        top = np.where(saturating, 1.0, top)
    return low, top


@timed("equalization")
def equalize(graph: Graph, samples: np.ndarray, absorb: bool = True) -> EqualizeResult:
    """Equalize every eligible layer pair in place; returns what was done."""
    result = EqualizeResult()
    pairs = find_pairs(graph)
    if not pairs:
        return result
    result.pairs = len(pairs)
    ranges = preact_ranges(graph, samples, [p.first for p in pairs])
    for pair in pairs:
        for node in (pair.first, pair.second):
            ensure_bias(graph, node)
    before = {n.name: _spread(_channel_ranges(graph.const(n.inputs[1]), 0)) for p in pairs for n in (p.first, p.second)}
    # Cumulative scale of each first layer's output channels: its pre-activation values are divided by it.
    totals = {p.first.name: np.ones(graph.const(p.first.inputs[1]).shape[0]) for p in pairs}
    limited: set[tuple[str, int]] = set()
    for _ in range(ROUNDS):
        largest_step = 0.0
        for pair in pairs:
            step = _equalize_pair(graph, pair, ranges[pair.first.name][1], totals[pair.first.name], limited)
            largest_step = max(largest_step, step)
        if largest_step < 1e-3:
            break
    result.clamp_limited_channels = len(limited)
    if absorb:
        for pair in pairs:
            low, high = ranges[pair.first.name]
            total = totals[pair.first.name]
            result.absorbed_channels += _absorb_high_bias(graph, pair, low / total, high / total)
    nodes = {n.name: n for p in pairs for n in (p.first, p.second)}
    result.weight_range_spread = {
        name: (spread, _spread(_channel_ranges(graph.const(nodes[name].inputs[1]), 0))) for name, spread in before.items()
    }
    return result


def _equalize_pair(graph: Graph, pair: Pair, high: np.ndarray, total: np.ndarray, limited: set[tuple[str, int]]) -> float:
    """One equalization step for a pair; returns the largest |log| of the scales applied."""
    first, second = pair.first, pair.second
    w_first, w_second = graph.const(first.inputs[1]), graph.const(second.inputs[1])
    axis = _input_axis(second, graph)
    r_first, r_second = _channel_ranges(w_first, 0), _channel_ranges(w_second, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        wanted = np.sqrt(r_first / r_second)
    wanted = np.where(np.isfinite(wanted) & (wanted > 0), wanted, 1.0)
    low, top = _scale_bounds(first, high)
    target = np.clip(total * wanted, low, top)
    for channel in np.flatnonzero(target != np.clip(total * wanted, *SCALE_LIMITS)):
        limited.add((first.name, int(channel)))
    step = target / total
    total *= step
    shape_first = (-1,) + (1,) * (w_first.ndim - 1)
    _set(graph, first.inputs[1], w_first / step.reshape(shape_first))
    _set(graph, first.inputs[2], graph.const(first.inputs[2]) / step)
    shape_second = [1] * w_second.ndim
    shape_second[axis] = -1
    _set(graph, second.inputs[1], w_second * step.reshape(shape_second))
    return float(np.abs(np.log(step)).max())


def _absorb_high_bias(graph: Graph, pair: Pair, low: np.ndarray, high: np.ndarray) -> int:
    """Move each channel's guaranteed positive offset into the next layer's bias."""
    first, second = pair.first, pair.second
    if first.act not in ("relu", "relu6"):
        return 0
    if second.op == "conv2d" and any(second.attrs["pads"]):
        return 0  # B would read padding that was 0 before and now stands for -c
    offset = np.maximum(low, 0.0)
    if first.act == "relu6":
        offset = np.where(high * CLAMP_MARGIN < RELU6_CLAMP, offset, 0.0)
    if not offset.any():
        return 0
    w_second = graph.const(second.inputs[1])
    if second.op == "linear":
        shift = w_second @ offset
    elif depthwise_multiplier(graph, second) == 1:
        shift = w_second.reshape(w_second.shape[0], -1).sum(axis=1) * offset
    else:
        shift = w_second.sum(axis=(2, 3)) @ offset
    _set(graph, first.inputs[2], graph.const(first.inputs[2]) - offset)
    _set(graph, second.inputs[2], graph.const(second.inputs[2]) + shift)
    return int(np.count_nonzero(offset))
