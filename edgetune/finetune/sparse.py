"""The sparse update: which layers, and what share of each one's output channels, train under
a training-memory budget (after Lin et al., "On-Device Training Under 256KB Memory", NeurIPS
2022, whose sparse update trains the layers and sub-tensors that contribute most).

The contribution of a channel is measured on the training data: the squared norm of the loss
gradient of its weights (and bias), averaged over SCORE_SAMPLES samples. To first order, that
is the loss decrease that a gradient step on the channel buys. The cost of an update is
``memory.efficient_estimate``'s: its parameters with their gradient and optimizer state, the
layer's input kept for the weight gradient, and the backward pass's reach down to the
earliest layer that trains.

The choice, for each candidate earliest layer: the layers from there to the output train their
biases, and channel shares (SHARES, the largest-gradient channels first) are added greedily by
score per byte until the budget is met; the candidate with the most score wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.finetune.memory import FLOAT, STATE_PER_PARAMETER, LayerCost, Trained, efficient_estimate, layer_costs
from edgetune.ir.graph import WEIGHTED_OPS, Graph

SCORE_SAMPLES = 64
# The plan fills this share of the budget: the memory model has been within 5% of the measured
# training state on the zoo's CNNs, and a budget is a promise on the measurement.
PLAN_SHARE = 0.9
SHARES = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class SparsePlan:
    channels: dict[str, np.ndarray]  # layer -> output channels whose weights train
    biases: frozenset[str]  # layers whose bias trains
    micro_batch: int  # samples forward and backward at a time (gradients accumulate over the batch)
    estimate: int  # bytes
    score_share: float  # of the summed channel scores, the share the chosen channels carry
    scoring_batch: int

    def to_dict(self, costs: list[LayerCost]) -> dict[str, Any]:
        total = {cost.name: cost.channels for cost in costs}
        reach = [cost.name for cost in costs if cost.name in self.biases or cost.name in self.channels]
        return {
            "from_layer": reach[0] if reach else None,
            "layers": {name: round(len(index) / total[name], 3) for name, index in self.channels.items()},
            "bias_layers": len(self.biases),
            "micro_batch": self.micro_batch,
            "estimate_bytes": self.estimate,
            "score_share": round(self.score_share, 4),
            "scored_on": f"{SCORE_SAMPLES} training samples, {self.scoring_batch} at a time",
        }


def channel_scores(graph: Graph, gradients: Callable[[int], dict[str, np.ndarray]], samples: int, batch: int) -> dict[str, np.ndarray]:
    """Per layer, each output channel's squared mean gradient norm (weights and bias).

    ``gradients(count)`` runs the next ``count`` training samples forward and backward and
    returns the summed loss gradients of every layer's weight and bias by tensor name."""
    total: dict[str, np.ndarray] = {}
    seen = 0
    while seen < samples:
        count = min(batch, samples - seen)
        for name, grad in gradients(count).items():
            total[name] = total.get(name, 0) + grad
        seen += count
    scores = {}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            weight = total[node.inputs[1]] / seen
            score = (weight.reshape(len(weight), -1) ** 2).sum(1)
            if len(node.inputs) > 2 and node.inputs[2]:
                score = score + (total[node.inputs[2]] / seen) ** 2
            scores[node.name] = score
    return scores


def scoring_batch(graph: Graph, costs: list[LayerCost], budget: int, batch: int) -> int:
    """The largest batch (halving from ``batch``) whose full backward pass (every gradient,
    no optimizer state) fits ``budget``; 1 when none does."""
    parameters = sum(cost.weights + cost.bias for cost in costs) * 2 * FLOAT  # gradient, running sum
    everything = Trained({cost.name: 0 for cost in costs}, frozenset(cost.name for cost in costs))
    size = batch
    while size > 1 and parameters + efficient_estimate(graph, costs, everything, size, False) > budget:
        size //= 2
    return size


def choose(graph: Graph, scores: dict[str, np.ndarray], budget: int, batch: int, fixed: dict[str, int], qat: bool) -> SparsePlan:
    """The best sparse update within ``budget``. Activations scale with the samples that go
    forward and backward together, so the batch may be cut into micro-batches (halving from
    ``batch``; gradients accumulate, the optimizer sees the same batch): the plan with the most
    score wins, at the largest micro-batch that reaches it. ``fixed``: layers trained anyway
    (a ``head`` selector) with their parameter counts."""
    costs, planned = layer_costs(graph), int(budget * PLAN_SHARE)
    plans = [_best_at(graph, costs, scores, planned, size, fixed, qat) for size in _halvings(batch)]
    found = [plan for plan in plans if plan is not None]
    if found:
        best = max(plan.score_share for plan in found)
        return next(plan for plan in found if plan.score_share >= best * (1 - 1e-9))
    need = int(_smallest(graph, costs, fixed, qat) / PLAN_SHARE)
    raise InputError(
        f"a training-memory budget of {budget / 1e3:.0f} KB is below what even the sparse update needs ({need / 1e3:.0f} KB"
        " for the last layer's bias, one sample at a time)",
        f"raise sparse:MEMORY to at least {-(-need // 1000)}KB",
    )


def _halvings(batch: int) -> list[int]:
    sizes = [batch]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def _smallest(graph: Graph, costs: list[LayerCost], fixed: dict[str, int], qat: bool) -> int:
    last = costs[-1]
    trained = Trained({**fixed, last.name: max(last.bias, 1)}, frozenset(fixed))
    return efficient_estimate(graph, costs, trained, 1, qat)


def _best_at(
    graph: Graph,
    costs: list[LayerCost],
    scores: dict[str, np.ndarray],
    budget: int,
    batch: int,
    fixed: dict[str, int],
    qat: bool,
) -> SparsePlan | None:
    order = {name: np.argsort(-scores[name], kind="stable") for name in scores}
    total = float(sum(s.sum() for s in scores.values())) or 1.0
    best: SparsePlan | None = None
    best_score = -1.0
    for start in range(len(costs) - 1, -1, -1):
        region = [cost for cost in costs[start:] if cost.name not in fixed]
        shares = _greedy(graph, costs, region, scores, order, budget, batch, fixed, qat)
        if shares is None:
            break  # an earlier start reaches further back: it costs more
        picked = {c.name: order[c.name][: _count(c, shares[c.name])] for c in region if shares[c.name]}
        gained = sum(float(scores[name][index].sum()) for name, index in picked.items())
        if gained > best_score:
            estimate = efficient_estimate(graph, costs, _trained(region, shares, fixed), batch, qat)
            channels = {name: np.sort(index) for name, index in picked.items()}
            best = SparsePlan(channels, frozenset(c.name for c in region if c.bias), batch, estimate, gained / total, 0)
            best_score = gained
    return best


def _count(cost: LayerCost, share: float) -> int:
    return max(1, round(cost.channels * share)) if share else 0


def _trained(region: list[LayerCost], shares: dict[str, float], fixed: dict[str, int]) -> Trained:
    parameters = dict(fixed)
    for cost in region:
        parameters[cost.name] = cost.bias + _count(cost, shares[cost.name]) * cost.per_channel
    updated = frozenset(c.name for c in region if shares[c.name])
    return Trained(parameters, frozenset([*fixed, *updated]), updated)


def _greedy(
    graph: Graph,
    costs: list[LayerCost],
    region: list[LayerCost],
    scores: dict[str, np.ndarray],
    order: dict[str, np.ndarray],
    budget: int,
    batch: int,
    fixed: dict[str, int],
    qat: bool,
) -> dict[str, float] | None:
    """Channel shares for the layers of ``region`` (biases all train): the step with the most
    score per byte that still fits, until none does. None: not even the biases fit.

    A step's bytes are added to the estimate without the biases (its rows with their
    gradient and optimizer state, and the layer's input when it is the layer's first step): an
    upper bound of the estimate, which takes the larger of training's and inference's
    activations, so the plan never exceeds the budget."""
    shares = {cost.name: 0.0 for cost in region}
    now = efficient_estimate(graph, costs, _trained(region, shares, fixed), batch, qat)
    if not region or now > budget:
        return None
    while True:
        best, best_ratio, best_extra = None, 0.0, 0
        for cost in region:
            old = shares[cost.name]
            higher = [s for s in SHARES if s > old]
            for share in higher[:1] if old else higher:
                rows = _count(cost, share) - _count(cost, old)
                first_step = 0 if old else cost.inputs * batch * FLOAT + cost.weights * FLOAT  # its input, its updated weight
                extra = rows * cost.per_channel * STATE_PER_PARAMETER + first_step
                gain = float(scores[cost.name][order[cost.name][_count(cost, old) : _count(cost, share)]].sum())
                if now + extra <= budget and extra > 0 and gain / extra > best_ratio:
                    best, best_ratio, best_extra = (cost.name, share), gain / extra, extra
        if best is None:
            return shares
        shares[best[0]] = best[1]
        now += best_extra
