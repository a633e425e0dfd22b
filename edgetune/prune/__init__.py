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

__all__ = ["PruneConfig", "parse_prune", "prune", "prune_channels", "prune_magnitude"]


def prune(graph: Graph, config: PruneConfig, samples: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Prune ``graph`` in place as ``config`` says; the report block. ``samples`` (and
    ``labels``) feed the gradient criteria (taylor, obd)."""
    if config.kind == "magnitude":
        return prune_magnitude(graph, config)
    return prune_channels(graph, config, samples, labels).to_dict()
