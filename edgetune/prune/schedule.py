"""Iterative pruning: reach the target in K steps, re-ranking channels after each step and
calling a recovery hook between steps (the fine-tune stage plugs in there)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import Graph
from edgetune.prune.apply import kept_count, prune_channels
from edgetune.prune.config import PruneConfig
from edgetune.prune.groups import find_groups

Recover = Callable[[Graph, int], None]


def prune_iteratively(
    graph: Graph,
    config: PruneConfig,
    steps: int,
    samples: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    recover: Recover | None = None,
) -> dict[str, Any]:
    """Prune channels in ``steps`` equal geometric steps: after step k a group keeps
    ``(1 - ratio) ** (k / steps)`` of its original channels, rounded to the channel multiple
    at the last step only. ``recover(graph, k)`` runs after every step but the last.
    MACs and parameters "before" in the report are those before the first step."""
    if steps < 1:
        raise InputError(f"{steps} pruning steps", "use one or more steps")
    if config.allocation == "global" and steps > 1:
        raise InputError("iterative pruning with global allocation", "use --prune-allocation uniform with --prune-steps")
    original = {g.producers[0].name: g.channels(graph) for g in find_groups(graph)}
    ratios = {name: config.override_map.get(name, config.ratio) for name in original}
    final = {name: kept_count(channels, ratios[name], config.channel_multiple) for name, channels in original.items()}
    history = []
    report = None
    for step in range(1, steps + 1):
        last = step == steps
        current = {g.producers[0].name: g.channels(graph) for g in find_groups(graph)}
        overrides = []
        for name, channels in current.items():
            # Geometric steps, never below the final count (which alone is rounded to the multiple).
            keep = (1.0 - ratios[name]) ** (step / steps)
            target = final[name] if last else max(kept_count(original[name], 1.0 - keep, 1), final[name])
            overrides.append((name, 1.0 - target / channels if channels else 0.0))
        step_config = replace(config, overrides=tuple(overrides), channel_multiple=config.channel_multiple if last else 1)
        report = prune_channels(graph, step_config, samples, labels)
        if step == 1:
            macs_before, params_before = report.macs_before, report.params_before
        history.append({"step": step, "macs": report.macs_after, "parameters": report.params_after})
        if recover is not None and not last:
            recover(graph, step)
    assert report is not None
    report.macs_before, report.params_before = macs_before, params_before
    document = report.to_dict()
    for row in document["groups"]:  # report against the channels before the first step
        row["before"] = original.get(row["layers"][0], row["before"]) if row["layers"] else row["before"]
    document["config"] = {**config.to_dict(), "steps": steps}
    document["steps"] = history
    return document
