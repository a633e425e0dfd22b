"""Channel importance of a group: weight magnitude of the layers that make the channels."""

from __future__ import annotations

import numpy as np

from edgetune.ir.graph import Graph
from edgetune.prune.groups import Group


def _row_norms(weight: np.ndarray, criterion: str) -> np.ndarray:
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    return np.abs(rows).sum(axis=1) if criterion == "l1" else np.sqrt((rows**2).sum(axis=1))


def group_importance(graph: Graph, group: Group, criterion: str) -> np.ndarray:
    """Per channel, the sum over the group's producing convs/linears and depthwise convs of the
    channel's weight norm, each layer normalised by its mean so that no layer's scale dominates."""
    total = np.zeros(group.channels(graph))
    for node in [*group.producers, *group.depthwise]:
        norms = _row_norms(graph.const(node.inputs[1]), criterion)
        mean = norms.mean()
        total += norms / mean if mean > 0 else norms
    return total
