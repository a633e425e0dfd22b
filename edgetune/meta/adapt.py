"""Few-shot adaptation: a model (compressed, meta-initialized, or both) learns new classes from
K labelled examples each, within a step, time and training-memory budget, and stays an int8
model.

The head becomes N-way with equal rows (``head.py``), and the weights that adapt take
``steps`` steps of full-batch SGD on the examples at ``lr``: the inner loop of meta-training,
whose settings a meta-initialized model carries (``graph.meta["meta_init"]``) and this uses
unless told otherwise. On a calibrated model the steps run through the int8 simulation with
its fixed scales (``runner.py``), so the artifacts compute what was trained.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.finetune.memory import TensorMemory, Trained, efficient_estimate, layer_costs
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.meta.head import head_node, set_way
from edgetune.meta.runner import MetaRunner
from edgetune.targets import fit_torch_threads

STRATEGIES = ("full", "head", "bias")
DEFAULT_STEPS, DEFAULT_LR = 10, 0.1


@dataclass(frozen=True)
class AdaptConfig:
    steps: int | None = None  # None: the meta-initialization's inner steps, else DEFAULT_STEPS
    lr: float | None = None  # None: the meta-initialization's inner learning rate, else DEFAULT_LR
    seconds: float | None = None  # wall-clock limit on the steps
    memory: int | None = None  # training-state budget in bytes
    strategy: str = "full"  # what adapts: every weight, the head only, or the biases and the head

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"adaptation strategy {self.strategy!r} is unknown", f"use one of {', '.join(STRATEGIES)}")
        if self.steps is not None and self.steps < 1 or self.lr is not None and self.lr <= 0:
            raise InputError("--steps and --lr must be positive", "fix the options")


def label_map(data: Dataset) -> list[int]:
    """The support set's classes, sorted: output i of the adapted model is class labels[i]."""
    if data.y is None or not data.has_classes:
        raise InputError(f"{data.source} has no class labels", "adaptation needs labelled examples of the new classes")
    labels = sorted(int(c) for c in np.unique(data.y))
    if len(labels) < 2:
        raise InputError(f"{data.source} holds examples of one class only", "give examples of at least two classes")
    return labels


def _adapting(runner: MetaRunner, graph: Graph, strategy: str) -> list[str]:
    head = head_node(graph)
    own = [name for name in head.inputs[1:3] if name]
    if strategy == "head":
        return own
    if strategy == "bias":
        return list(dict.fromkeys([*(name for name in runner.names if name in runner.biases), *own]))
    return list(runner.names)


def _predicted(graph: Graph, names: list[str], batch: int) -> int:
    costs, parameters, saved = layer_costs(graph), {}, set()
    layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    for cost, node in zip(costs, layers):
        count = sum(graph.const(name).size for name in node.inputs[1:3] if name and name in names)
        if count:
            parameters[cost.name] = count
        if node.inputs[1] in names:
            saved.add(cost.name)
    # Plain SGD keeps no optimizer state: a trained value and its gradient, not four floats.
    return efficient_estimate(graph, costs, Trained(parameters, frozenset(saved)), batch, qat=False) - sum(parameters.values()) * 8


def adapt(graph: Graph, support: Dataset, config: AdaptConfig) -> dict[str, Any]:
    """Adapt ``graph`` in place to the classes of ``support``; the report block."""
    fit_torch_threads()
    labels = label_map(support)
    counts = {c: int((support.y == c).sum()) for c in labels}  # type: ignore[union-attr]
    inner = graph.meta.get("meta_init", {})
    steps = config.steps or int(inner.get("inner_steps", DEFAULT_STEPS))
    lr = config.lr or float(inner.get("inner_lr", DEFAULT_LR))
    head = set_way(graph, len(labels))
    runner = MetaRunner(graph)
    names = _adapting(runner, graph, config.strategy)
    predicted = _predicted(graph, names, len(support))
    if config.memory is not None and predicted > config.memory:
        raise InputError(
            f"adapting {config.strategy} on {len(support)} examples needs about {math.ceil(predicted / 1e3)} KB of training state,"
            f" above the {config.memory / 1e3:g} KB budget",
            "use --strategy head or bias, give fewer examples, or raise --memory",
        )
    x = torch.from_numpy(support.x)
    y = torch.from_numpy(np.searchsorted(labels, support.y).astype(np.int64))  # type: ignore[arg-type]
    weights = runner.initial()
    trained = {name: weights[name] for name in names}
    fixed = {name: value for name, value in weights.items() if name not in trained}
    memory = TensorMemory([*runner.constants.values(), *weights.values()])
    started, done, before = time.perf_counter(), 0, _accuracy(runner, weights, x, y)
    for index in range(steps):
        if config.seconds is not None and time.perf_counter() - started >= config.seconds:
            break
        leaves = {name: value.detach().requires_grad_() for name, value in trained.items()}
        with memory.recording() if index == 0 else contextlib.nullcontext():
            loss = runner.loss({**fixed, **leaves}, x, y)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        if index == 0:  # the saved activations, each trained value and its gradient (SGD keeps no state)
            memory.peak = sum(memory.saved.values()) + sum(2 * v.numel() * v.element_size() for v in leaves.values())
        trained = {name: (leaves[name] - lr * grads[name]).detach() for name in leaves}
        done += 1
    runner.commit(trained)
    final = {**fixed, **trained}
    # The artifacts' metadata names the outputs: now the adapted classes (calibration keeps them).
    names = [support.labels[c] if c < len(support.labels) else str(c) for c in labels]
    graph.meta["data"] = {**graph.meta.get("data", {}), "labels": names, "adapted": True}
    return {
        "classes": labels,
        "outputs": {str(i): c for i, c in enumerate(labels)},
        "examples_per_class": counts,
        "head": head,
        "meta_initialized": bool(inner),
        "strategy": config.strategy,
        "steps": done,
        "steps_asked": steps,
        "lr": lr,
        "seconds": round(time.perf_counter() - started, 3),
        "int8": runner.calibrated,
        "support_accuracy": {"before": before, "after": _accuracy(runner, final, x, y)},
        "memory": {"budget_bytes": config.memory, "predicted_bytes": predicted, "measured_bytes": memory.peak},
    }


def _accuracy(runner: MetaRunner, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((runner.logits(weights, x).argmax(1) == y).float().mean())
