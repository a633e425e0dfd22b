"""Channel pruning: rank each group's units, choose what stays, and report; ``cut`` removes the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import Graph
from edgetune.ir.select import inside, select
from edgetune.ir.stats import graph_macs
from edgetune.prune.config import PruneConfig
from edgetune.prune.cut import remove_units
from edgetune.prune.groups import Group, find_groups
from edgetune.prune.importance import GRADIENT, group_importance, weight_scores
from edgetune.prune.reestimate import reestimate, reference_stats
from edgetune.prune.transformer import Block, block_importance, find_blocks, remove_block


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


def _apply_protection(graph: Graph, groups: list[Group], config: PruneConfig, blocks: list[Block]) -> dict[str, tuple[int, float]]:
    """Keep the groups of protected layers whole; returns each layer's own ratio. A name is a
    layer or a module (every layer inside it); a name that picks none is an error. A
    transformer block's layers are named too (their blocks are protected by the caller)."""
    in_blocks = {name for block in blocks for name in block.layers}
    names = [node.name for node in graph.nodes if any(node in [*g.producers, *g.depthwise] for g in groups) or node.name in in_blocks]
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


def _select(importance: np.ndarray, group: Group, count: int) -> np.ndarray | None:
    """The indices of the units kept: the most important ``count``, ties broken by index so
    the result is deterministic. A group whose units reach different slices keeps each
    stratum's share (at least one); None if a grouped conv's segments would then keep
    unequal counts."""
    order = np.argsort(-importance, kind="stable")
    if len(group.strata) <= 1:
        return np.sort(order[:count])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    share = count / len(group.units)
    keep = np.sort(np.concatenate([sorted(s, key=lambda unit: rank[unit])[: max(1, int(round(len(s) * share)))] for s in group.strata]))
    for segments in group.segments:
        if len({len(np.intersect1d(segment, keep)) for segment in segments}) > 1:
            return None
    return keep


def _layers(group: Group) -> list[str]:
    return [node.name for node in [*group.producers, *group.depthwise]]


def _whole(group: Group, why: str | None = None) -> dict[str, Any]:
    """The report row of a group kept whole."""
    row: dict[str, Any] = {"layers": _layers(group), "before": len(group.units), "after": len(group.units), "kept_whole": True}
    if group.protected:
        row["protected"] = True
    if group.unsupported:
        row["unsupported"] = group.unsupported
    if why is not None:
        row["why"] = why
    return row


def _protected(block: Block, config: PruneConfig) -> bool:
    return any(inside(layer, name) for layer in block.layers for name in config.protect)


def _block_ratio(block: Block, config: PruneConfig) -> float:
    return config.heads if block.kind == "heads" and config.heads is not None else config.ratio


def _block_thresholds(blocks: list[Block], config: PruneConfig, importance: dict[int, np.ndarray]) -> dict[str, float | None]:
    """Global allocation: per kind (heads, neurons), one threshold over every free block's
    units. Their scores are not normalised per layer (channel groups' are): the blocks of one
    kind share their shapes, so a unit's weight norm or saliency compares across layers."""
    if config.allocation != "global":
        return {}
    thresholds: dict[str, float | None] = {}
    for kind in ("heads", "neurons"):
        free = [b for b in blocks if b.kind == kind and not _protected(b, config)]
        if free:
            thresholds[kind] = _global_threshold([importance[id(b)] for b in free], _block_ratio(free[0], config))
    return thresholds


def _block_keep(
    block: Block,
    config: PruneConfig,
    ratios: dict[str, tuple[int, float]],
    importance: np.ndarray,
    thresholds: dict[str, float | None],
    rows: list[dict[str, Any]],
) -> np.ndarray | None:
    """The units a transformer block keeps (None: all), its report row appended to ``rows``.
    Heads take ``config.heads`` when given; neurons round to the target's channel multiple.
    Under global allocation a block keeps its units above its kind's threshold (at least one),
    unless a layer of it has a ratio of its own."""
    row: dict[str, Any] = {"layers": block.layers, "kind": block.kind, "before": block.count, "after": block.count, "kept_whole": True}
    if _protected(block, config):
        rows.append({**row, "protected": True})
        return None
    multiple = config.channel_multiple if block.kind == "neurons" else 1
    own = max((ratios[name] for name in block.layers if name in ratios), default=None)
    if own is None and block.kind in thresholds:
        threshold = thresholds[block.kind]
        above = int((importance > threshold).sum()) if threshold is not None else block.count
        count = int(min(block.count, max(-(-above // multiple) * multiple, min(multiple, block.count), 1)))
    else:
        count = kept_count(block.count, own[1] if own is not None else _block_ratio(block, config), multiple)
    order = np.argsort(-importance, kind="stable")
    rows.append({**row, "after": count, "kept_whole": count == block.count})
    return np.sort(order[:count]) if count < block.count else None


def prune_channels(graph: Graph, config: PruneConfig, samples: np.ndarray | None = None, labels: np.ndarray | None = None) -> PruneReport:
    """Remove ``config.ratio`` of the channels of every prunable group of ``graph``, in place.

    A group the grouping cannot follow (its channels reach a transpose, a strided slice, ...)
    is an error naming the layers, unless ``config.skip_unsupported`` keeps it whole.
    """
    groups, blocks = find_groups(graph), find_blocks(graph)
    ratios = _apply_protection(graph, groups, config, blocks)
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
    removed: set[int] = set()
    free = [g for g in groups if not g.blocked]
    saliency = weight_scores(graph, config.criterion, samples, labels) if config.criterion in GRADIENT else None
    scores = {id(g): group_importance(graph, g, config.criterion, saliency) for g in free}
    threshold = _global_threshold([scores[id(g)] for g in free], config.ratio) if config.allocation == "global" else None
    rows = []
    for group in groups:
        if group.blocked:
            rows.append(_whole(group))
            continue
        importance = scores[id(group)]
        # of the group's layers' ratios, the one given by the most specific name
        override = max((ratios[n.name] for n in group.producers if n.name in ratios), default=(0, None))[1]
        count = _kept(importance, config, threshold, override)
        keep = _select(importance, group, count)
        if keep is None:
            rows.append(_whole(group, "its grouped convolutions would keep unequal channels per group"))
            continue
        removed.update(np.delete(np.array(group.units, dtype=np.int64), keep).tolist())
        row: dict[str, Any] = {"layers": _layers(group), "before": len(group.units), "after": len(keep), "kept_whole": False}
        if count == len(group.units) and config.channel_multiple > 1:
            row["why"] = (
                f"keeps all {count} channels: the target's channel multiple is {config.channel_multiple}, and the ratio rounds to it as {count}"
            )
        rows.append(row)
    # one threshold over all blocks compares units across layers: their scores as they are
    normalize = config.allocation != "global"
    unit_scores = {id(block): block_importance(graph, block, saliency, normalize) for block in blocks}
    thresholds = _block_thresholds(blocks, config, unit_scores)
    cuts = [(block, _block_keep(block, config, ratios, unit_scores[id(block)], thresholds, rows)) for block in blocks]
    kept = remove_units(graph, groups[0].cmap, removed) if removed else {}
    for block, keep in cuts:
        if keep is not None:
            remove_block(graph, block, keep)
    graph.remove_unused()
    report = PruneReport(config, rows, macs_before, graph_macs(graph), params_before, graph.parameter_count(), kept)
    if reference and kept and samples is not None:
        report.batchnorm = reestimate(graph, reference, samples, kept)
    return report
