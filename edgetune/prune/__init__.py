"""Prune: remove channels for real, so the exported artifacts are smaller dense models.

Channels that must go together (a conv's outputs and the depthwise conv and residual adds
that share them) form groups, found on the captured graph; each group is ranked by
weight magnitude and cut, uniformly or by one global threshold, rounded to the target's
channel multiple. Unstructured magnitude pruning zeroes single weights instead.
"""

from typing import Any

import numpy as np

from edgetune.ir.graph import Graph
from edgetune.prune.apply import prune_channels
from edgetune.prune.config import PruneConfig, parse_prune
from edgetune.prune.magnitude import prune_magnitude
from edgetune.prune.schedule import Recover, prune_iteratively

__all__ = ["PruneConfig", "Recover", "parse_prune", "prune", "prune_channels", "prune_iteratively", "prune_magnitude"]


def prune(
    graph: Graph,
    config: PruneConfig,
    samples: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    steps: int = 1,
    recover: Recover | None = None,
) -> dict[str, Any]:
    """Prune ``graph`` in place as ``config`` says; the report block. ``samples`` (and
    ``labels``) feed the gradient criteria (taylor, obd); ``steps`` > 1 prunes iteratively,
    calling ``recover`` between steps."""
    if not config.drop_layers:
        return _prune(graph, config, samples, labels, steps, recover)
    from edgetune.ir.stats import graph_macs
    from edgetune.prune.layers import drop_layers

    macs, params = graph_macs(graph), graph.parameter_count()
    layers = drop_layers(graph, config.drop_layers, samples)
    report = _prune(graph, config, samples, labels, steps, recover)
    report["layers"] = layers
    if "macs" in report:  # against the model before any layer went
        report["macs"] = {**report["macs"], "before": macs, "ratio": round(report["macs"]["after"] / max(macs, 1), 4)}
        report["parameters"] = {
            **report["parameters"],
            "before": params,
            "ratio": round(report["parameters"]["after"] / max(params, 1), 4),
        }
    return report


def _prune(
    graph: Graph, config: PruneConfig, samples: np.ndarray | None, labels: np.ndarray | None, steps: int, recover: Recover | None
) -> dict[str, Any]:
    if config.kind == "magnitude":
        return prune_magnitude(graph, config, samples)
    if steps > 1 or recover is not None:
        return prune_iteratively(graph, config, steps, samples, labels, recover)
    return prune_channels(graph, config, samples, labels).to_dict()
