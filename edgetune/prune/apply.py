"""Physical channel removal: slice weights, biases and shapes of every member of a group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import Graph, Node, Tensor
from edgetune.ir.select import select
from edgetune.ir.stats import graph_macs
from edgetune.prune.config import PruneConfig
from edgetune.prune.groups import Group, find_groups
from edgetune.prune.importance import GRADIENT, group_importance, weight_scores
from edgetune.prune.reestimate import reestimate, reference_stats


@dataclass
class PruneReport:
    config: PruneConfig
    groups: list[dict[str, Any]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> original output channels it keeps
    batchnorm: dict[str, Any] | None = None

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
            **({"batchnorm": self.batchnorm} if self.batchnorm is not None else {}),
        }


def kept_count(channels: int, ratio: float, multiple: int) -> int:
    """Channels left after removing ``ratio`` of them, rounded to ``multiple`` (never below one multiple)."""
    keep = channels * (1.0 - ratio)
    rounded = int(round(keep / multiple)) * multiple
    return int(min(channels, max(rounded, min(multiple, channels), 1)))


def _listed(names: list[str], shown: int = 6) -> str:
    """A few names and how many more (an unrolled GRU has hundreds of steps)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _apply_protection(graph: Graph, groups: list[Group], config: PruneConfig) -> dict[str, tuple[int, float]]:
    """Keep the groups of protected layers whole; returns each layer's own ratio. A name is a
    layer or a module (every layer inside it); a name that picks none is an error."""
    names = [node.name for node in graph.nodes if any(node in [*g.producers, *g.depthwise] for g in groups)]
    first = next((node.name for node in graph.nodes if node.op == "conv2d"), None)
    protect = [first if name == "first" else name for name in config.protect]
    protected = set(select(names, [n for n in protect if n is not None], "--prune-protect", "prunable layer"))
    ratios: dict[str, tuple[int, float]] = {}  # layer -> (how specific the name that gave it was, ratio)
    for name, ratio in sorted(config.overrides, key=lambda item: len(item[0])):  # a layer's own ratio beats its module's
        ratios.update(dict.fromkeys(select(names, [name], "prune.layers", "prunable layer"), (len(name), ratio)))
    for group in groups:
        if any(node.name in protected for node in [*group.producers, *group.depthwise]):
            group.blocked = True
            group.protected = True
    return ratios


def _global_threshold(scores: list[np.ndarray], ratio: float) -> float | None:
    """One importance threshold across all groups (scores are normalised per layer, so comparable):
    channels at or below it go."""
    if not scores:
        return None
    everything = np.sort(np.concatenate(scores))
    count = int(round(ratio * everything.size))
    return float(everything[count - 1]) if count > 0 else None


def _kept(importance: np.ndarray, config: PruneConfig, threshold: float | None, override: float | None = None) -> int:
    channels = importance.size
    if override is not None:
        return kept_count(channels, override, config.channel_multiple)
    if config.allocation == "global":
        above = int((importance > threshold).sum()) if threshold is not None else channels
        # round up to the multiple: global allocation never empties a group
        multiple = config.channel_multiple
        return int(min(channels, max(-(-above // multiple) * multiple, min(multiple, channels), 1)))
    return kept_count(channels, config.ratio, config.channel_multiple)


def _set(graph: Graph, name: str, data: np.ndarray) -> str:
    graph.tensors[name] = Tensor(name, tuple(data.shape), np.ascontiguousarray(data, dtype=np.float32))
    return name


def _slice_output(graph: Graph, node: Node, keep: np.ndarray) -> None:
    node.inputs[1] = _set(graph, f"{node.name}.weight.pruned", graph.const(node.inputs[1])[keep])
    if len(node.inputs) > 2:
        node.inputs[2] = _set(graph, f"{node.name}.bias.pruned", graph.const(node.inputs[2])[keep])


def _slice_input(graph: Graph, node: Node, keep: np.ndarray) -> None:
    node.inputs[1] = _set(graph, f"{node.name}.weight.in_pruned", graph.const(node.inputs[1])[:, keep])


def prune_group(graph: Graph, group: Group, keep: np.ndarray) -> None:
    """Keep channels ``keep`` of ``group``: its layers' weights, its readers' columns, its
    tensors' shapes, and the columns of every concatenation it is a part of."""
    composites = [(node, composite, _composite_keep(graph, node, group, keep)) for node, composite in group.feeds]
    for node in group.producers:
        _slice_output(graph, node, keep)
    for node in group.depthwise:
        _slice_output(graph, node, keep)
        node.attrs["groups"] = len(keep)
    for node in group.consumers:
        _slice_input(graph, node, keep)
    for node in group.reshapes:
        node.attrs["shape"] = [len(keep), *node.attrs["shape"][1:]]
    for node in group.channelwise:
        node.inputs[1] = _set(graph, f"{node.name}.slope.pruned", graph.const(node.inputs[1])[keep])
    for name in group.tensors:
        tensor = graph.tensors[name]
        tensor.shape = (tensor.shape[0], len(keep), *tensor.shape[2:])
    for _, composite, columns in composites:
        prune_group(graph, composite, columns)


def _composite_keep(graph: Graph, concat: Node, part: Group, keep: np.ndarray) -> np.ndarray:
    """The concatenation's channels that stay when ``part`` keeps ``keep``: at each place the
    part's tensor is concatenated, its kept channels, shifted by what comes before."""
    widths = [int(graph.tensors[name].shape[1]) for name in concat.inputs]
    columns, offset = [], 0
    for name, width in zip(concat.inputs, widths):
        columns.append(offset + keep if name in part.tensors else offset + np.arange(width))
        offset += width
    return np.concatenate(columns)


def prune_channels(graph: Graph, config: PruneConfig, samples: np.ndarray | None = None, labels: np.ndarray | None = None) -> PruneReport:
    """Remove ``config.ratio`` of the channels of every prunable group of ``graph``, in place.

    A group the grouping cannot follow (its channels reach a concatenation, a transpose, ...)
    is an error naming the layers, unless ``config.skip_unsupported`` keeps it whole.
    """
    groups = find_groups(graph)
    ratios = _apply_protection(graph, groups, config)
    refused = [g for g in groups if g.unsupported and not g.protected]
    if refused and not config.skip_unsupported and config.ratio > 0:
        names = sorted({where for g in refused for where in g.unsupported})
        layers = sorted({n.name for g in refused for n in g.producers})
        raise InputError(
            f"channel pruning cannot follow the channels of {_listed(layers)} through {_listed(names)}",
            "pass --prune-skip-unsupported to keep those layers whole",
        )
    macs_before, params_before = graph_macs(graph), graph.parameter_count()
    reference = reference_stats(graph, samples) if config.reestimate and samples is not None else None
    kept: dict[str, np.ndarray] = {}
    free = [g for g in groups if not g.blocked]
    saliency = weight_scores(graph, config.criterion, samples, labels) if config.criterion in GRADIENT else None
    scores = {id(g): group_importance(graph, g, config.criterion, saliency) for g in free}
    threshold = _global_threshold([scores[id(g)] for g in free], config.ratio) if config.allocation == "global" else None
    rows = []
    for group in groups:
        channels = group.channels(graph)
        layers = [node.name for node in [*group.producers, *group.depthwise]]
        if group.blocked:
            row: dict[str, Any] = {"layers": layers, "before": channels, "after": channels, "kept_whole": True}
            if group.protected:
                row["protected"] = True
            if group.unsupported:
                row["unsupported"] = group.unsupported
            rows.append(row)
            continue
        importance = scores[id(group)]
        # of the group's layers' ratios, the one given by the most specific name
        override = max((ratios[n.name] for n in group.producers if n.name in ratios), default=(0, None))[1]
        count = _kept(importance, config, threshold, override)
        # Highest importance first; ties broken by channel index so the result is deterministic.
        keep = np.sort(np.argsort(-importance, kind="stable")[:count])
        if count < channels:
            prune_group(graph, group, keep)
            kept.update({node.name: keep for node in [*group.producers, *group.depthwise]})
        row = {"layers": layers, "before": channels, "after": count, "kept_whole": False}
        if count == channels and config.channel_multiple > 1:
            row["why"] = (
                f"keeps all {channels} channels: the target's channel multiple is {config.channel_multiple}, and the ratio rounds to it as {channels}"
            )
        rows.append(row)
    graph.remove_unused()
    report = PruneReport(config, rows, macs_before, graph_macs(graph), params_before, graph.parameter_count(), kept)
    if reference and kept and samples is not None:
        report.batchnorm = reestimate(graph, reference, samples, kept)
    return report
