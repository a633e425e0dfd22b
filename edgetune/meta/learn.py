"""Meta-training: an initialization that adapts to a new N-way task in a few gradient steps
from K examples per class.

- ``maml`` (Finn et al., "Model-Agnostic Meta-Learning", ICML 2017): the query loss after the
  inner loop, differentiated through the inner loop itself (second order, ``torch.func``);
- ``fomaml``: the same with the inner gradients held constant (first order: the query
  gradient at the adapted weights);
- ``reptile`` (Nichol et al., "On First-Order Meta-Learning Algorithms", 2018): the inner loop
  runs on the task's examples and the initialization moves towards where it ended.

Each meta-step averages ``meta_batch`` episodes and updates with Adam. The inner loop is
plain SGD at ``inner_lr`` for ``inner_steps`` steps on the support set: exactly what
``adapt`` later runs on a device's examples, so the meta-learned start is tuned for it. The
best initialization on validation episodes (held-out examples of the same classes) is kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.finetune.budget import Budget
from edgetune.interrupt import StopRequest
from edgetune.ir.graph import Graph
from edgetune.meta.episodes import Episode, class_pool, split_pool
from edgetune.meta.head import head_node, set_way, tie_rows
from edgetune.meta.runner import MetaRunner
from edgetune.progress import Progress, silent
from edgetune.targets import fit_torch_threads

ALGORITHMS = ("maml", "fomaml", "reptile")
VALIDATION_EPISODES = 40
VALIDATION_SHARE = 0.25  # of each class's examples, held out for validation episodes


@dataclass(frozen=True)
class MetaConfig:
    budget: Budget
    algo: str = "maml"
    way: int = 5
    shot: int = 5
    query: int = 10  # query examples per class and episode
    inner_steps: int = 5
    inner_lr: float = 0.1
    meta_lr: float = 1e-3
    meta_batch: int = 4  # episodes per meta-update
    classes: tuple[int, ...] | None = None  # the classes episodes draw from (None: all)
    eval_every: int = 25  # meta-steps between validations
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise InputError(f"meta-learning algorithm {self.algo!r} is unknown", f"use one of {', '.join(ALGORITHMS)}")
        if self.budget.kind == "epochs":
            raise InputError(
                "a meta-training budget in epochs has no meaning: episodes are drawn at random", "give steps (500steps) or time (10m)"
            )
        if min(self.way, self.shot, self.query, self.inner_steps, self.meta_batch) < 1 or self.way < 2:
            raise InputError("--way must be at least 2; --shot, --query, --inner-steps and --meta-batch at least 1", "fix the options")
        if self.inner_lr <= 0 or self.meta_lr <= 0:
            raise InputError("learning rates must be positive", "fix --inner-lr or --meta-lr")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(budget=str(self.budget), classes=list(self.classes) if self.classes is not None else None)
        return data


def inner_loop(
    runner: MetaRunner, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, first_order: bool
) -> dict[str, torch.Tensor]:
    """``steps`` steps of SGD at ``lr`` on (x, y) from ``weights``; differentiable unless ``first_order``."""
    gradient = torch.func.grad(runner.loss)
    for _ in range(steps):
        grads = gradient(weights, x, y)
        weights = {name: weights[name] - lr * (grads[name].detach() if first_order else grads[name]) for name in weights}
    return weights


def episode_accuracy(runner: MetaRunner, weights: Mapping[str, torch.Tensor], episode: Episode, steps: int, lr: float) -> float:
    """Query accuracy after adapting ``weights`` on the episode's support set."""
    x, y = torch.from_numpy(episode.support_x), torch.from_numpy(episode.support_y)
    adapted = inner_loop(runner, {k: v.detach() for k, v in weights.items()}, x, y, steps, lr, first_order=True)
    with torch.no_grad():
        out = runner.logits(adapted, torch.from_numpy(episode.query_x))
    return float((out.argmax(1).numpy() == episode.query_y).mean())


class _MetaRun:
    def __init__(self, graph: Graph, data: Dataset, config: MetaConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        pool = class_pool(data, config.classes, config.way, config.shot + config.query)
        self.train_pool, held = split_pool(pool, VALIDATION_SHARE, config.shot + config.query, rng)
        self.validation = [held.episode(config.way, config.shot, config.query, rng) for _ in range(VALIDATION_EPISODES)]
        self.rng = rng
        self.head = set_way(graph, config.way)
        node = head_node(graph)
        self.head_tensors = (node.inputs[1], node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None)
        self.runner = MetaRunner(graph)
        self.weights = {name: torch.nn.Parameter(value) for name, value in self.runner.initial().items()}
        self.optimizer = torch.optim.Adam(self.weights.values(), lr=config.meta_lr)
        self.step, self.started = 0, time.perf_counter()
        self.before = self.validate()
        self.best, self.best_step = self.before, 0
        self.best_weights = {k: v.detach().clone() for k, v in self.weights.items()}
        self.curve: list[tuple[int, float]] = [(0, self.before)]

    def spent(self) -> float:
        budget = self.config.budget
        return self.step / budget.amount if budget.kind == "steps" else (time.perf_counter() - self.started) / budget.amount

    def validate(self) -> float:
        c = self.config
        return float(np.mean([episode_accuracy(self.runner, self.weights, e, c.inner_steps, c.inner_lr) for e in self.validation]))

    def meta_gradient(self, episode: Episode) -> dict[str, torch.Tensor]:
        c = self.config
        sx, sy = torch.from_numpy(episode.support_x), torch.from_numpy(episode.support_y)
        qx, qy = torch.from_numpy(episode.query_x), torch.from_numpy(episode.query_y)
        start = {k: v.detach() for k, v in self.weights.items()}
        if c.algo == "reptile":
            ended = inner_loop(self.runner, start, torch.cat([sx, qx]), torch.cat([sy, qy]), c.inner_steps, c.inner_lr, first_order=True)
            return {name: start[name] - ended[name].detach() for name in start}

        def query_loss(weights: dict[str, torch.Tensor]) -> torch.Tensor:
            adapted = inner_loop(self.runner, weights, sx, sy, c.inner_steps, c.inner_lr, first_order=c.algo == "fomaml")
            return self.runner.loss(adapted, qx, qy)

        return dict(torch.func.grad(query_loss)(start))

    def meta_step(self) -> None:
        c = self.config
        total: dict[str, torch.Tensor] = {}
        for _ in range(c.meta_batch):
            for name, grad in self.meta_gradient(self.train_pool.episode(c.way, c.shot, c.query, self.rng)).items():
                total[name] = total.get(name, 0) + grad / c.meta_batch
        self.optimizer.zero_grad(set_to_none=True)
        for name, param in self.weights.items():
            param.grad = total[name]
        self.optimizer.step()
        tie_rows(self.weights, *self.head_tensors)
        self.step += 1
        if self.step % c.eval_every == 0:
            self.offer()

    def offer(self) -> None:
        accuracy = self.validate()
        self.curve.append((self.step, accuracy))
        if accuracy > self.best:
            self.best, self.best_step = accuracy, self.step
            self.best_weights = {k: v.detach().clone() for k, v in self.weights.items()}


def meta_train(graph: Graph, data: Dataset, config: MetaConfig, progress: Progress = silent) -> dict[str, Any]:
    """Meta-train ``graph`` in place (its head becomes ``config.way``-way); the report block."""
    fit_torch_threads()
    torch.manual_seed(config.seed)
    run = _MetaRun(graph, data, config)
    outcome = "budget spent"
    with StopRequest() as stop:
        while run.spent() < 1.0:
            run.meta_step()
            progress(min(int(100 * run.spent()), 100), 100, "meta-training")
            if stop.requested:
                outcome = "interrupted"
                break
    if run.step % config.eval_every:
        run.offer()
    progress(100, 100, "meta-training")
    run.runner.commit(run.best_weights)
    graph.meta["meta_init"] = {
        "algo": config.algo,
        "way": config.way,
        "shot": config.shot,
        "inner_steps": config.inner_steps,
        "inner_lr": config.inner_lr,
        "classes": list(run.train_pool.classes),
    }
    return {
        "config": config.to_dict(),
        "classes": list(run.train_pool.classes),
        "head": run.head,
        "int8": run.runner.calibrated,
        "steps": run.step,
        "seconds": round(time.perf_counter() - run.started, 3),
        "outcome": outcome,
        "validation": {
            "episodes": VALIDATION_EPISODES,
            "metric": f"query accuracy after {config.inner_steps} inner steps, {config.way}-way {config.shot}-shot, held-out examples",
            "before": run.before,
            "best": run.best,
            "best_step": run.best_step,
            "curve": run.curve,
        },
        "deterministic": config.budget.deterministic and outcome != "interrupted",
    }
