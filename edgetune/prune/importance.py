"""Channel importance of a group, from the layers that make its channels.

- ``l1`` / ``l2``: the norm of each channel's weights;
- ``taylor``: first-order Taylor, sum of |w * dL/dw| over the channel's weights
  (Molchanov et al., 2019);
- ``obd``: Optimal Brain Damage, sum of 0.5 * H_ii * w_i^2 with the Hessian diagonal taken
  as the empirical Fisher, E[(dL/dw)^2] (LeCun et al., 1990).

The gradient criteria use data: cross-entropy on labels when the data has them, otherwise
cross-entropy against the unpruned model's own top-1 predictions (distillation with hard
targets: soft-target distillation has zero gradient at the unpruned model itself).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.torch_exec import GraphRunner
from edgetune.prune.groups import Group

MAGNITUDE = ("l1", "l2")
GRADIENT = ("taylor", "obd")


def _rows(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).astype(np.float64)


def weight_scores(
    graph: Graph, criterion: str, samples: np.ndarray | None = None, labels: np.ndarray | None = None, batch: int = 32
) -> dict[str, np.ndarray]:
    """Per-element saliency of every conv and linear weight."""
    weights = [node.inputs[1] for node in graph.nodes if node.op in WEIGHTED_OPS]
    if criterion in MAGNITUDE:
        return {name: np.abs(graph.const(name)) if criterion == "l1" else graph.const(name) ** 2 for name in weights}
    if samples is None:
        raise ValueError(f"criterion {criterion} needs data")
    runner = GraphRunner(graph)
    params = {name: runner.constants[name].clone().requires_grad_(True) for name in weights}
    runner.constants.update(params)
    taylor = {name: torch.zeros_like(p) for name, p in params.items()}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    batches = 0
    for start in range(0, len(samples), batch):
        x = torch.from_numpy(samples[start : start + batch])
        logits = runner(x).reshape(len(x), -1)
        if labels is not None:
            target = torch.from_numpy(labels[start : start + batch])
        else:
            target = logits.detach().argmax(dim=1)
        loss = F.cross_entropy(logits, target)
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, weight), grad in zip(params.items(), grads):
            taylor[name] += (weight.detach() * grad).abs()
            fisher[name] += grad**2
        batches += 1
    if criterion == "taylor":
        return {name: (value / batches).numpy() for name, value in taylor.items()}
    return {name: (0.5 * fisher[name] / batches * params[name].detach() ** 2).numpy() for name in weights}


def group_importance(graph: Graph, group: Group, criterion: str, scores: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per unit of the group, the sum over the group's producing convs/linears and depthwise
    convs of its channels' saliency, each layer normalised by its mean so that no layer's
    scale dominates."""
    total = np.zeros(len(group.units))
    for node in [*group.producers, *group.depthwise]:
        weight = node.inputs[1]
        if scores is not None:
            per_channel = _rows(scores[weight]).sum(axis=1)
        elif criterion == "l1":
            per_channel = np.abs(_rows(graph.const(weight))).sum(axis=1)
        else:
            per_channel = np.sqrt((_rows(graph.const(weight)) ** 2).sum(axis=1))
        mean = per_channel.mean()
        normalized = per_channel / mean if mean > 0 else per_channel
        index = group.indices(node.outputs[0])
        np.add.at(total, index[index >= 0], normalized[index >= 0])
    return total
