"""Physical channel removal: slice weights, biases and shapes of every member of a group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.ir.graph import Graph, Node, Tensor
from edgetune.ir.stats import node_macs
from edgetune.prune.config import PruneConfig
from edgetune.prune.groups import Group, find_groups
from edgetune.prune.importance import group_importance


@dataclass
class PruneReport:
    config: PruneConfig
    groups: list[dict[str, Any]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "macs": {"before": self.macs_before, "after": self.macs_after, "ratio": round(self.macs_after / max(self.macs_before, 1), 4)},
            "parameters": {
                "before": self.params_before,
                "after": self.params_after,
                "ratio": round(self.params_after / max(self.params_before, 1), 4),
            },
            "groups": self.groups,
        }


def kept_count(channels: int, ratio: float, multiple: int) -> int:
    """Channels left after removing ``ratio`` of them, rounded to ``multiple`` (never below one multiple)."""
    keep = channels * (1.0 - ratio)
    rounded = int(round(keep / multiple)) * multiple
    return int(min(channels, max(rounded, min(multiple, channels), 1)))


def _set(graph: Graph, name: str, data: np.ndarray) -> str:
    graph.tensors[name] = Tensor(name, tuple(data.shape), np.ascontiguousarray(data, dtype=np.float32))
    return name


def _slice_output(graph: Graph, node: Node, keep: np.ndarray) -> None:
    node.inputs[1] = _set(graph, f"{node.name}.weight.pruned", graph.const(node.inputs[1])[keep])
    if len(node.inputs) > 2:
        node.inputs[2] = _set(graph, f"{node.name}.bias.pruned", graph.const(node.inputs[2])[keep])


def _slice_input(graph: Graph, node: Node, keep: np.ndarray) -> None:
    node.inputs[1] = _set(graph, f"{node.name}.weight.in_pruned", graph.const(node.inputs[1])[:, keep])


def _macs(graph: Graph) -> int:
    return sum(node_macs(graph, node) for node in graph.nodes)


def prune_group(graph: Graph, group: Group, keep: np.ndarray) -> None:
    for node in group.producers:
        _slice_output(graph, node, keep)
    for node in group.depthwise:
        _slice_output(graph, node, keep)
        node.attrs["groups"] = len(keep)
    for node in group.consumers:
        _slice_input(graph, node, keep)
    for node in group.reshapes:
        node.attrs["shape"] = [len(keep), *node.attrs["shape"][1:]]
    for name in group.tensors:
        tensor = graph.tensors[name]
        tensor.shape = (tensor.shape[0], len(keep), *tensor.shape[2:])


def prune_channels(graph: Graph, config: PruneConfig) -> PruneReport:
    """Remove ``config.ratio`` of the channels of every prunable group of ``graph``, in place."""
    macs_before, params_before = _macs(graph), graph.parameter_count()
    rows = []
    for group in find_groups(graph):
        channels = group.channels(graph)
        layers = [node.name for node in [*group.producers, *group.depthwise]]
        if group.blocked:
            rows.append({"layers": layers, "before": channels, "after": channels, "kept_whole": True})
            continue
        count = kept_count(channels, config.ratio, config.channel_multiple)
        importance = group_importance(graph, group, config.criterion)
        # Highest importance first; ties broken by channel index so the result is deterministic.
        keep = np.sort(np.argsort(-importance, kind="stable")[:count])
        if count < channels:
            prune_group(graph, group, keep)
        rows.append({"layers": layers, "before": channels, "after": count, "kept_whole": False})
    graph.remove_unused()
    return PruneReport(config, rows, macs_before, _macs(graph), params_before, graph.parameter_count())
