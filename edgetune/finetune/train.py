"""The fine-tune loop: distillation and cross-entropy, AdamW with a cosine schedule, a hard
budget, and the best model on the validation split kept."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.finetune.budget import Budget
from edgetune.ir.graph import Graph
from edgetune.ir.torch_exec import GraphRunner
from edgetune.progress import Progress, silent

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    budget: Budget
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    temperature: float = 4.0
    distill_weight: float = 0.5  # share of the distillation loss when labels exist too
    val_share: float = 0.1
    eval_every: int = 25  # steps between validations
    seed: int = 0
    optimizer: str = "adamw"  # adamw, adam or sgd (momentum 0.9)
    warmup: float = 0.05  # share of the budget with a linear learning-rate ramp
    label_smoothing: float = 0.0
    patience: int = 0  # stop after this many validations without improvement (0: never)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_share < 0.5:
            raise InputError(f"validation share {self.val_share}", "use a value in (0, 0.5)")
        if self.batch_size < 1 or self.lr <= 0:
            raise InputError("fine-tune batch size and learning rate must be positive", "fix the options")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer {self.optimizer!r} is unknown", f"use one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.warmup < 1.0 or self.patience < 0:
            raise InputError("label smoothing and warm-up must lie in [0, 1), patience must not be negative", "fix the options")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["budget"] = str(self.budget)
        return {"version": 1, **data}


def _trainable(graph: Graph, runner: GraphRunner) -> dict[str, torch.nn.Parameter]:
    names = [name for node in graph.nodes if node.op in ("conv2d", "linear") for name in node.inputs[1:]]
    params = {name: torch.nn.Parameter(runner.constants[name].clone()) for name in dict.fromkeys(names)}
    runner.constants.update(params)
    return params


def _split(data: Dataset, share: float, seed: int) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(data))
    count = max(1, int(round(len(data) * share)))
    val, train = order[:count], order[count:]

    def pick(index: np.ndarray, suffix: str) -> Dataset:
        return Dataset(data.x[index], None if data.y is None else data.y[index], f"{data.source}{suffix}", data.labels, data.preprocess)

    return pick(train, f"[train {100 - round(100 * share)}%]"), pick(val, f"[validation {round(100 * share)}%]")


def _metric(runner: GraphRunner, data: Dataset, teacher_top1: np.ndarray | None) -> tuple[float, float]:
    """Validation accuracy with labels, else top-1 agreement with the teacher; and, to break
    ties on a small split, minus the cross-entropy against the same targets."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(data), 256):
            batch = torch.from_numpy(data.x[start : start + 256])
            chunks.append(runner(batch).reshape(len(batch), -1))
    logits = torch.cat(chunks)
    reference = data.y if data.y is not None else teacher_top1
    assert reference is not None
    loss = float(F.cross_entropy(logits, torch.from_numpy(np.asarray(reference, np.int64))))
    return float(np.mean(logits.argmax(1).numpy() == reference)), -loss


def _loss(logits: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None, config: FinetuneConfig) -> torch.Tensor:
    terms = []
    if teacher is not None:
        temperature = config.temperature
        distill = (
            F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(teacher / temperature, 1), reduction="batchmean") * temperature**2
        )
        terms.append((config.distill_weight if labels is not None else 1.0, distill))
    if labels is not None:
        cross_entropy = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        terms.append((1.0 - config.distill_weight if teacher is not None else 1.0, cross_entropy))
    return sum(weight * term for weight, term in terms)  # type: ignore[return-value]


class _EarlyStop(Exception):
    """No validation improvement for ``patience`` validations."""


def _teacher_top1(teacher: GraphRunner | None, val: Dataset) -> np.ndarray | None:
    """The teacher's predictions, the validation targets when the data has no labels."""
    if teacher is None or val.y is not None:
        return None
    with torch.no_grad():
        return teacher(torch.from_numpy(val.x)).reshape(len(val), -1).argmax(1).numpy()


def _optimizer(config: FinetuneConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: FinetuneConfig, spent: float) -> float:
    """Linear warm-up over the first ``warmup`` share of the budget, then cosine decay to 0."""
    spent = min(max(spent, 0.0), 1.0)
    if config.warmup and spent < config.warmup:
        return config.lr * (spent + 1e-3) / config.warmup
    progress = (spent - config.warmup) / (1.0 - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


class _Best:
    """The best weights seen on the validation split, and when."""

    def __init__(self, metric: tuple[float, float], params: dict[str, torch.nn.Parameter]) -> None:
        self.metric, self.step = metric, 0
        self.weights = {name: p.detach().clone() for name, p in params.items()}

    def offer(self, metric: tuple[float, float], params: dict[str, torch.nn.Parameter], step: int) -> None:
        if metric > self.metric:
            self.metric, self.step = metric, step
            self.weights = {name: p.detach().clone() for name, p in params.items()}


def _train_step(
    runner: GraphRunner,
    teacher: GraphRunner | None,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    config: FinetuneConfig,
) -> float:
    logits = runner(x).reshape(len(x), -1)
    with torch.no_grad():
        soft = teacher(x).reshape(len(x), -1) if teacher is not None else None
    loss = _loss(logits, labels, soft, config)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params.values(), 5.0)
    optimizer.step()
    return float(loss.item())


def finetune(
    graph: Graph,
    train: Dataset,
    config: FinetuneConfig,
    teacher: Graph | None = None,
    val: Dataset | None = None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Train ``graph``'s conv and linear weights in place within ``config.budget``; keep the best."""
    if train.y is None and teacher is None:
        raise InputError(f"{train.source} has no labels and there is no model to distil from", "give labelled --train data")
    if val is None:
        train, val = _split(train, config.val_share, config.seed)
    torch.manual_seed(config.seed)
    runner = GraphRunner(graph)
    params = _trainable(graph, runner)
    teacher_runner = GraphRunner(teacher) if teacher is not None else None
    teacher_top1 = _teacher_top1(teacher_runner, val)
    optimizer = _optimizer(config, list(params.values()))
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    total_steps = {"steps": int(config.budget.amount), "epochs": int(config.budget.amount) * steps_per_epoch}.get(config.budget.kind)
    generator = torch.Generator().manual_seed(config.seed)
    x_all, y_all = torch.from_numpy(train.x), None if train.y is None else torch.from_numpy(train.y)

    start_metric = _metric(runner, val, teacher_top1)
    best = _Best(start_metric, params)
    step, started, interrupted, stopped_early = 0, time.perf_counter(), False, False
    losses: list[float] = []

    def spent() -> float:
        """Share of the budget used, 0..1."""
        if total_steps is not None:
            return step / total_steps
        return (time.perf_counter() - started) / config.budget.amount

    try:
        while spent() < 1.0:
            order = torch.randperm(len(x_all), generator=generator)
            for begin in range(0, len(order), config.batch_size):
                if spent() >= 1.0:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, spent())
                index = order[begin : begin + config.batch_size]
                labels = None if y_all is None else y_all[index]
                losses.append(_train_step(runner, teacher_runner, params, optimizer, x_all[index], labels, config))
                step += 1
                if step % config.eval_every == 0:
                    best.offer(_metric(runner, val, teacher_top1), params, step)
                    if config.patience and step - best.step >= config.patience * config.eval_every:
                        raise _EarlyStop
                progress(min(int(100 * spent()), 100), 100, "fine-tune")
    except KeyboardInterrupt:
        interrupted = True
    except _EarlyStop:
        stopped_early = True
    best.offer(_metric(runner, val, teacher_top1), params, step)
    for name, value in best.weights.items():
        graph.tensors[name].data = value.numpy().astype(np.float32)
    if interrupted or total_steps is not None and step < total_steps:
        progress(100, 100, "fine-tune")
    return {
        "config": config.to_dict(),
        "steps": step,
        "epochs": round(step / steps_per_epoch, 2),
        "seconds": round(time.perf_counter() - started, 3),
        "validation": {
            "data": val.source,
            "samples": len(val),
            "metric": "accuracy" if val.y is not None else "top-1 agreement with the unpruned model",
        },
        "metric_before": start_metric[0],
        "metric_best": best.metric[0],
        "validation_loss_best": -best.metric[1],
        "best_step": best.step,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "interrupted": interrupted,
        "stopped_early": stopped_early,
        "deterministic": config.budget.deterministic and not interrupted,
        "note": "step and epoch budgets repeat exactly with the same seed"
        if config.budget.deterministic
        else "a wall-clock budget is not repeatable: the step count depends on machine load",
    }
