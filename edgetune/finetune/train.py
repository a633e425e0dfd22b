"""The fine-tune loop: a hard budget, the best model on the validation split kept.

Float fine-tuning trains the graph's conv and linear weights and biases; quantization-aware
training (``qat=True``, on a calibrated graph) trains them through the exporters' quantizer
and learns the scales too (``qat.py``). Losses come from ``losses.py``, the layers that train
from ``strategy.py``, the batch size under a memory budget from ``memory.py``, augmentation
from ``augment.py``, checkpoints from ``checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.finetune import checkpoint as checkpoints
from edgetune.finetune.augment import Augmentation, mixup_pairs
from edgetune.finetune.budget import Budget
from edgetune.finetune.distributed import World
from edgetune.finetune.head import embeds
from edgetune.finetune.hidden import DISTILL, HIDDEN_WEIGHT, collector, hidden_loss, matched_states
from edgetune.finetune.lite import add_lite_residuals
from edgetune.finetune.lite import describe as describe_lite
from edgetune.finetune.losses import SIMILARITY, TASKS, mixed_loss, validation_score
from edgetune.finetune.memory import (
    MemoryPlan,
    PeakRss,
    TensorMemory,
    Trained,
    checkpoint_segments,
    efficient_estimate,
    estimate,
    layer_costs,
    plan,
    process_estimate,
)
from edgetune.finetune.peft import Peft, add_zero_biases
from edgetune.finetune.qat import SCALE_PREFIX, QatRunner
from edgetune.finetune.similarity import halves, pair_score, sides
from edgetune.finetune.sparse import SCORE_SAMPLES, SparsePlan, channel_scores, choose, scoring_batch
from edgetune.finetune.strategy import Strategy, parameter_depths, weighted_layers
from edgetune.finetune.text_augment import TextAugmenter
from edgetune.interrupt import StopRequest
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.torch_exec import GraphRunner
from edgetune.progress import Progress, silent
from edgetune.targets import fit_torch_threads

OPTIMIZERS = ("adamw", "adam", "sgd")
DEFAULT_LR = 3e-3
# A pretrained transformer forgets under 3e-3 in a short fine-tune: on MiniLM, recovery after
# pruning reached validation cosine 0.73 at 3e-3 against 0.83 at 5e-4 (and 0.81 at 1.5e-4).
TRANSFORMER_LR = 5e-4
TRANSFORMER_WIDTH = 256  # MiniLM is 384 wide, BERT-base 768; the tests' and the demo's encoders 32 to 64
MEASURED_STEPS = 3  # steps whose training state is counted tensor by tensor (the first has no optimizer state yet)


@dataclass(frozen=True)
class FinetuneConfig:
    budget: Budget
    lr: float | None = None  # None: default_lr(graph)
    lr_decay: float = 1.0  # discriminative learning rate: the factor per layer (transformer block) from the top
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
    task: str = "auto"  # classification, regression, or auto (from the labels)
    strategy: Strategy = field(default_factory=Strategy)
    augment: Augmentation = field(default_factory=Augmentation)
    qat: bool = False  # train through the int8 quantizer, learning its scales
    scale_lr: float = 0.1  # QAT: the scales' learning rate relative to ``lr`` (they are log-parametrised)
    memory: int | None = None  # training-memory budget in bytes
    clip: float = 5.0  # gradient-norm clipping
    checkpoint_every: float = 60.0  # seconds between checkpoints (when a checkpoint path is given)
    distill: str = "predictions"  # or "intermediate": hidden states too; "tinybert": and attention (finetune/hidden.py)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_share < 0.5:
            raise InputError(f"validation share {self.val_share}", "use a value in (0, 0.5)")
        if self.batch_size < 1 or self.lr is not None and self.lr <= 0 or not 0.0 < self.lr_decay <= 1.0:
            raise InputError("fine-tune batch size and learning rate must be positive, and the decay in (0, 1]", "fix the options")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer {self.optimizer!r} is unknown", f"use one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.warmup < 1.0 or self.patience < 0:
            raise InputError("label smoothing and warm-up must lie in [0, 1), patience must not be negative", "fix the options")
        if self.task not in TASKS:
            raise InputError(f"task {self.task!r} is unknown", f"use one of {', '.join(TASKS)}")
        if self.distill not in DISTILL:
            raise InputError(f"distillation {self.distill!r} is unknown", f"use one of {', '.join(DISTILL)}")
        if self.strategy.lite and self.qat:
            raise InputError(
                "lite residual modules join the float model before calibration, and this fine-tune trains the int8 model"
                " (--qat, or a compressed model.edgetune)",
                "fine-tune the float model without --qat, or drop lite",
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(budget=str(self.budget), strategy=str(self.strategy), augment=self.augment.describe())
        return {"version": 2, **data}


class FloatRunner(GraphRunner):
    """The float graph with its conv and linear weights and biases as parameters."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        names = [name for _, layer in weighted_layers(graph) for name in layer]
        self.trainable = {name: nn.Parameter(self.constants[name].clone()) for name in dict.fromkeys(names)}
        self.constants.update(self.trainable)

    peft: Peft | None = None  # parameter-efficient updates added to the weights

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        return {**self.trainable, **(self.peft.params if self.peft is not None else {})}

    def constant(self, name: str) -> torch.Tensor:
        base = self.constants[name]
        return base if self.peft is None else self.peft.weight(name, base)

    def commit(self, values: dict[str, torch.Tensor]) -> int:
        for name, value in values.items():
            self.graph.tensors[name].data = value.numpy().astype(np.float32)
        return 0


def _split(data: Dataset, share: float, seed: int) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(data))
    count = max(1, int(round(len(data) * share)))
    val, train = order[:count], order[count:]

    def pick(index: np.ndarray, suffix: str) -> Dataset:
        return data.subset(index, f"{data.source}{suffix}")

    return pick(train, f"[train {100 - round(100 * share)}%]"), pick(val, f"[validation {round(100 * share)}%]")


def _task(config: FinetuneConfig, data: Dataset, graph: Graph) -> str:
    if data.pair is not None:
        return _pair_task(config, data, graph)
    if config.task == "embedding" and data.y is not None:
        raise InputError(
            f"--task embedding distils from the original model, and {data.source} has labels",
            "drop the labels, or use --task classification",
        )
    if config.task != "auto":
        if config.task == "regression" and data.has_classes or config.task == "classification" and data.has_targets:
            raise InputError(f"the labels of {data.source} do not suit --task {config.task}", "integers for classes, floats for regression")
        task = config.task
    elif data.y is None and embeds(graph):
        task = "embedding"
    else:
        task = "regression" if data.has_targets else "classification"
    if task == "classification" and data.y is not None and data.has_classes and len(data) < 2 * (int(data.y.max()) + 1):
        classes = int(data.y.max()) + 1
        raise InputError(
            f"{len(data)} labelled training examples in {data.source} for {classes} classes",
            f"give at least two examples per class ({2 * classes} or more)",
        )
    return task


def _pair_task(config: FinetuneConfig, data: Dataset, graph: Graph) -> str:
    """Similarity pairs, each side encoded apart: a bi-encoder's task, on an embedding."""
    if config.task not in ("auto", "embedding"):
        raise InputError(
            f"{data.source} holds pairs whose sides are encoded apart (similarity pairs), and --task {config.task} scores one input",
            'use --task embed, or set data.pairs = "joined" for a cross-encoder',
        )
    if not embeds(graph):
        raise InputError(
            f"similarity pairs train an embedding, and the model's output {list(graph.tensors[graph.outputs[0]].shape)} is no"
            " embedding (an L2-normalized vector, or a token model's hidden states)",
            "give the encoder without its classification head",
        )
    if data.y is not None and len(np.unique(data.y)) < 2:
        raise InputError(f"every pair of {data.source} has the same score", "give pairs of different scores, or none (positives only)")
    return SIMILARITY


def _text_augmenter(config: FinetuneConfig, train: Dataset) -> TextAugmenter | None:
    """The text edits of ``--augment`` for text data; tensor transforms refused on token ids."""
    augment = config.augment
    if augment.on_tensors and train.is_indices:
        names = ", ".join(name for name in augment.describe() if not augment.text or name not in augment.text.describe())
        raise InputError(
            f"augmentation {names} transforms images or signals, and {train.source} holds token ids",
            "use text edits instead: mask, delete, swap, insert, synonyms:FILE or paraphrase:CALLABLE",
        )
    if not augment.text:
        return None
    augmenter = TextAugmenter(augment.text, train.preprocess, train.inputs, train.source)
    augmenter.exact = augmenter.roundtrip_share(train.x)
    return augmenter


def default_lr(graph: Graph) -> float:
    """TRANSFORMER_LR for a transformer of width TRANSFORMER_WIDTH or more (its LayerNorms'
    size), DEFAULT_LR otherwise: small encoders (trained from scratch, as the demo's) learn
    faster at the higher rate."""
    widths = [graph.tensors[node.inputs[0]].shape[-1] for node in graph.nodes if node.op == "layer_norm"]
    return TRANSFORMER_LR if widths and max(widths) >= TRANSFORMER_WIDTH else DEFAULT_LR


def learning_rate(config: FinetuneConfig, spent: float) -> float:
    """Linear warm-up over the first ``warmup`` share of the budget, then cosine decay to 0."""
    assert config.lr is not None, "resolved by finetune()"
    spent = min(max(spent, 0.0), 1.0)
    if config.warmup and spent < config.warmup:
        return config.lr * (spent + 1e-3) / config.warmup
    progress = (spent - config.warmup) / (1.0 - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(config: FinetuneConfig, params: dict[str, nn.Parameter], depths: dict[str, int]) -> torch.optim.Optimizer:
    """AdamW (or Adam, SGD) with one group per layer depth when the learning rate decays by
    depth (``depths``: a parameter's depth below the top layer), and the scales in their own."""
    weights: dict[int, list[nn.Parameter]] = {}
    for name, p in params.items():
        if not name.startswith(SCALE_PREFIX):
            weights.setdefault(depths.get(name, 0) if config.lr_decay != 1.0 else 0, []).append(p)
    scales = [p for name, p in params.items() if name.startswith(SCALE_PREFIX)]
    groups: list[dict[str, Any]] = [
        {"params": group, "weight_decay": config.weight_decay, "relative_lr": config.lr_decay**depth}
        for depth, group in sorted(weights.items())
    ]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "relative_lr": config.scale_lr})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr or DEFAULT_LR, momentum=0.9)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr or DEFAULT_LR)
    return torch.optim.AdamW(groups, lr=config.lr or DEFAULT_LR)


def _forward(runner: GraphRunner, x: np.ndarray, chunk: int) -> torch.Tensor:
    """Outputs (N x features) without gradients, ``chunk`` samples at a time (the memory
    planner counts a chunk of twice the training batch)."""
    with torch.no_grad():
        return torch.cat([runner(torch.from_numpy(x[i : i + chunk])).reshape(len(x[i : i + chunk]), -1) for i in range(0, len(x), chunk)])


class _Scorer:
    """The sparse update's gradients: training samples in a seeded order, ``count`` at a time,
    forward and backward through every weight and bias (no optimizer, nothing changes)."""

    def __init__(self, run: _Run) -> None:
        self.run, self.position, self.batch = run, 0, 0
        self.order = torch.randperm(len(run.x_all), generator=torch.Generator().manual_seed(run.config.seed + 7))

    def __call__(self, count: int) -> dict[str, np.ndarray]:
        run, self.batch = self.run, max(self.batch, count)
        index = self.order[self.position : self.position + count]
        if len(index) < count:
            self.position, index = 0, self.order[:count]
        self.position += count
        x, params = run.x_all[index], run.runner.trainable
        if run.paired:
            x = sides(x)
        out = run.runner(x).reshape(len(x), -1)
        with torch.no_grad():
            soft = run.teacher(x).reshape(len(x), -1) if run.teacher is not None else None
        targets = None if run.y_all is None else run.y_all[index]
        config = run.config
        loss = mixed_loss(out, targets, soft, run.task, config.distill_weight, config.temperature, config.label_smoothing)
        grads = torch.autograd.grad(loss * len(x), list(params.values()), allow_unused=True)
        return {name: (g.numpy() if g is not None else np.zeros(params[name].shape, np.float32)) for name, g in zip(params, grads)}


class _Best:
    """The best weights seen on the validation split, and when."""

    def __init__(self, metric: tuple[float, float], params: dict[str, nn.Parameter]) -> None:
        self.metric, self.step = metric, 0
        self.weights = {name: p.detach().clone() for name, p in params.items()}

    def offer(self, metric: tuple[float, float], params: dict[str, nn.Parameter], step: int) -> None:
        if metric > self.metric:
            self.metric, self.step = metric, step
            self.weights = {name: p.detach().clone() for name, p in params.items()}


class _EarlyStop(Exception):
    """No validation improvement for ``patience`` validations."""


class _StopAtStep(Exception):
    """Ctrl-C was seen; the loop stops at the end of the step."""


class _Run:
    """One fine-tune: its state is everything a checkpoint holds."""

    def __init__(self, graph: Graph, train: Dataset, val: Dataset, config: FinetuneConfig, teacher: Graph | None) -> None:
        self.graph, self.train, self.val, self.config = graph, train, val, config
        self.task = _task(config, train, graph)
        self.world = World.current()
        self.zero_biases = add_zero_biases(graph) if config.strategy.bias else []
        self.lite = add_lite_residuals(graph, config.seed) if config.strategy.lite else []
        self.runner: FloatRunner | QatRunner = QatRunner(graph) if config.qat else FloatRunner(graph)
        self.teacher = GraphRunner(teacher) if teacher is not None else None
        self.matching = (
            matched_states(graph, teacher, attention=config.distill == "tinybert")
            if teacher is not None and config.distill in ("intermediate", "tinybert")
            else None
        )
        self.layers = weighted_layers(graph)
        self.plan: MemoryPlan | None = None
        self.batch_size, self.frozen_inputs = config.batch_size, 0
        self.paired = train.pair is not None  # similarity pairs: x_all is [pairs, 2, ...]
        self.x_all = torch.from_numpy(np.stack([train.x, train.pair], axis=1) if train.pair is not None else train.x)
        self.text_augment = _text_augmenter(config, train)
        self.y_all = None if train.y is None else torch.from_numpy(train.y)
        self.sparse: SparsePlan | None = None
        self.micro_batch: int | None = None  # forward and backward this many samples at a time, gradients accumulated
        if config.strategy.efficient:
            self._set_up_updates()
        elif config.memory is not None:
            # a batch of pairs runs as twice as many samples
            self.plan = plan(graph, config.memory, config.batch_size * self.per_example, config.qat, teacher is not None)
            self.batch_size, self.frozen_inputs = max(1, self.plan.batch_size // self.per_example), self.plan.frozen_inputs
            if self.plan.checkpointing:
                self.runner.checkpoint_segments = checkpoint_segments(graph)
        self.params = self.runner.parameters_by_name()
        self.origin = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in self.params.values())).hexdigest()
        self.model = self.world.wrap(self.runner, partial=config.strategy.kind != "full" or self.frozen_inputs > 0)
        self.depths = parameter_depths(graph, self.params)
        self.optimizer = _optimizer(config, self.params, self.depths)
        self.tensors = TensorMemory([*self.runner.constants.values(), *self.params.values()])
        self.steps_per_epoch = max(1, math.ceil(len(train) / (self.batch_size * self.world.size)))
        kind, amount = config.budget.kind, int(config.budget.amount)
        self.total_steps = {"steps": amount, "epochs": amount * self.steps_per_epoch}.get(kind)
        self.order_generator = torch.Generator().manual_seed(config.seed)
        self.augment_generator = torch.Generator().manual_seed(config.seed + 1 + self.world.rank)
        self.reference = self._validation_reference()
        self.order: torch.Tensor | None = None
        self.position = self.step = 0
        self.seconds_before = 0.0  # spent before a resume
        self.started = time.perf_counter()
        self.losses: list[float] = []
        self.start_metric = self.validate()
        self.best = _Best(self.start_metric, self.params)

    # -- parameter-efficient updates -------------------------------------------------------
    def full_layers(self, spent: float) -> list[str]:
        """Layers the strategy's selector trains in full at ``spent`` of the budget."""
        count = self.config.strategy.trainable_layers(len(self.layers), spent, self.frozen_inputs)
        return [name for name, _ in self.layers[len(self.layers) - count :]]

    def _set_up_updates(self) -> None:
        """bias, lora:R and sparse:MEMORY: the updates, and the batch that fits a memory budget."""
        config, graph = self.config, self.graph
        full = set(self.full_layers(0.0))
        if config.strategy.sparse is not None:
            budget, costs = config.strategy.sparse, layer_costs(graph)
            fixed = {cost.name: cost.weights + cost.bias for cost in costs if cost.name in full}
            scorer = _Scorer(self)
            scores = channel_scores(graph, scorer, SCORE_SAMPLES, scoring_batch(graph, costs, budget, self.batch_size))
            self.sparse = replace(choose(graph, scores, budget, self.batch_size, fixed, config.qat), scoring_batch=scorer.batch)
            self.micro_batch = self.sparse.micro_batch if self.sparse.micro_batch < self.batch_size else None
        self.runner.peft = Peft(graph, config.strategy, full, self.sparse, config.seed)
        while config.memory is not None and self.batch_size > 1 and self.predicted()[0] > config.memory:
            self.batch_size //= 2

    def trained(self) -> Trained:
        """What trains at the start, as the memory model counts it."""
        peft, costs = self.runner.peft, layer_costs(self.graph)
        full = set(self.full_layers(0.0))
        live = peft.live if peft is not None else set()
        parameters, saved, derived = {}, set(), set()
        for cost, node in zip(costs, (n for n in self.graph.nodes if n.op in WEIGHTED_OPS)):
            weight, bias = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else ""
            update = sum(p.numel() for name, p in peft.params.items() if name.endswith(":" + weight)) if peft is not None else 0
            whole = cost.weights if cost.name in full or weight in live else 0
            count = whole + update + (cost.bias if cost.name in full or bias in live else 0)
            if count:
                parameters[cost.name] = count
            if whole or update:
                saved.add(cost.name)
            if update:
                derived.add(cost.name)
        return Trained(parameters, frozenset(saved), frozenset(derived))

    def predicted(self) -> tuple[int, int]:
        """The memory model's bytes for this run: the process's, and the training state's."""
        costs, trained, teacher = layer_costs(self.graph), self.trained(), self.teacher is not None
        batch = self.batch_size * self.per_example
        state = efficient_estimate(self.graph, costs, trained, (self.micro_batch or self.batch_size) * self.per_example, self.config.qat)
        if self.runner.peft is not None:
            return process_estimate(self.graph, costs, trained, batch, self.config.qat, teacher), state
        checkpointing = self.plan is not None and self.plan.checkpointing
        return estimate(self.graph, batch, self.frozen_inputs, self.config.qat, teacher, checkpointing), state

    @property
    def per_example(self) -> int:
        """Samples per training example through the model: 2 for a pair."""
        return 2 if self.paired else 1

    # -- budget ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def spent(self) -> float:
        """Share of the budget used, 0..1 (every process agrees under torchrun)."""
        if self.total_steps is not None:
            return self.step / self.total_steps
        return self.world.agree_max(self.elapsed() / self.config.budget.amount)

    def remaining(self) -> str:
        if self.total_steps is not None:
            return f"{self.total_steps - self.step} steps left"
        return f"{max(0.0, self.config.budget.amount - self.elapsed()):.0f}s left"

    # -- data -----------------------------------------------------------------------------
    def _validation_reference(self) -> torch.Tensor:
        """Validation labels, else the teacher's outputs (its top-1 for classification); pairs
        are scored against their own scores (or, without, against each other)."""
        if self.paired:
            return torch.zeros(0)
        if self.val.y is not None:
            return torch.from_numpy(self.val.y)
        assert self.teacher is not None
        out = _forward(self.teacher, self.val.x, 2 * self.batch_size)
        return out if self.task in ("regression", "embedding") else out.argmax(1)

    def next_batch(self) -> torch.Tensor:
        """This process's share of the next global batch, in a seeded order, epoch after epoch."""
        size = self.batch_size * self.world.size
        # Under torchrun an incomplete last global batch is dropped: a process must never get an empty share.
        short = self.world.size > 1 and self.order is not None and self.position + size > len(self.order)
        if self.order is None or self.position >= len(self.order) or short:
            self.order, self.position = torch.randperm(len(self.x_all), generator=self.order_generator), 0
        index = self.order[self.position : self.position + size]
        self.position += size
        return index[self.world.rank :: self.world.size]

    def targets(self, index: torch.Tensor, partner: torch.Tensor | None, lam: torch.Tensor | None) -> torch.Tensor | None:
        if self.y_all is None:
            return None
        y = self.y_all[index]
        if partner is None or lam is None:
            return y
        if self.task == "regression":
            weight = lam.reshape(-1, *[1] * (y.ndim - 1))
            return weight * y + (1 - weight) * y[partner]
        classes = self.runner.graph.tensors[self.graph.outputs[0]].shape[-1]
        one_hot = F.one_hot(y, classes).float()
        return lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[partner]

    # -- steps ----------------------------------------------------------------------------
    def set_trainable(self, spent: float) -> None:
        count = self.config.strategy.trainable_layers(len(self.layers), spent, self.frozen_inputs)
        live = {name for _, layer in self.layers[len(self.layers) - count :] for name in layer}
        scales = None
        if self.runner.peft is not None:
            live |= self.runner.peft.live
            scales = self._scales_in_reach(live | self.runner.peft.updated)
        for name, param in self.params.items():
            if scales is not None and name.startswith(SCALE_PREFIX):
                param.requires_grad_(name[len(SCALE_PREFIX) :] in scales)
                continue
            tensor = name[len(SCALE_PREFIX) :] if name.startswith(SCALE_PREFIX) else name
            param.requires_grad_(tensor in live or tensor not in self.runner.trainable)

    def _scales_in_reach(self, training: set[str]) -> set[str]:
        """QAT under a parameter-efficient strategy: the scales that learn are those of the
        weights that train and of the activations from the earliest training layer on, so
        that the backward pass (and its memory) stops where the updates do, as planned."""
        nodes = self.graph.nodes
        first = min((i for i, node in enumerate(nodes) if any(name in training for name in node.inputs[1:])), default=len(nodes))
        return {node.outputs[0] for node in nodes[first:]} | {name for name in training if name in self.graph.tensors}

    def train_step(self) -> None:
        spent = self.spent()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, spent) * group["relative_lr"]
        self.set_trainable(spent)
        index = self.next_batch()
        # Augmentation draws from a generator seeded per step and process, so a resumed run
        # (or any process of a distributed one) needs no saved generator state.
        self.augment_generator.manual_seed((self.config.seed + 1) * 1_000_003 + self.world.rank * 7_919 + self.step)
        x = self.x_all[index]
        if self.text_augment is not None:
            x = self._augmented_text(x)
        x = self.config.augment(x, self.augment_generator)
        partner = lam = None
        if self.config.augment.mixup:
            partner, lam = mixup_pairs(len(x), self.config.augment.mixup, self.augment_generator)
            x = lam.reshape(-1, *[1] * (x.ndim - 1)) * x + (1 - lam.reshape(-1, *[1] * (x.ndim - 1))) * x[partner]
        targets = self.targets(index, partner, lam)
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self._forward_backward(x[part], None if targets is None else targets[part], len(x)) for part in self._parts(len(x))]
        config = self.config
        for param in self.params.values():
            if not param.requires_grad:
                param.grad = None  # frozen for now (DDP may have filled in zeros)
        torch.nn.utils.clip_grad_norm_([p for p in self.params.values() if p.grad is not None], config.clip)
        self.optimizer.step()
        if self.step < MEASURED_STEPS:
            self.tensors.finish(list(self.params.values()), self.optimizer)
        self.losses.append(sum(losses))
        self.step += 1

    def _augmented_text(self, x: torch.Tensor) -> torch.Tensor:
        assert self.text_augment is not None
        if not self.paired:
            return self.text_augment(x, self.augment_generator)
        return torch.stack(halves(self.text_augment(sides(x), self.augment_generator)), dim=1)

    def _parts(self, size: int) -> list[slice]:
        """The batch in micro-batches (a sparse plan's, to fit its budget), else whole."""
        micro = self.micro_batch or size
        return [slice(start, start + micro) for start in range(0, size, micro)]

    def _forward_backward(self, x: torch.Tensor, targets: torch.Tensor | None, batch: int) -> float:
        """One micro-batch's share of the batch's loss, its gradients added to the parameters'."""
        config, measuring, count = self.config, self.step < MEASURED_STEPS, len(x)
        if self.paired:
            x = sides(x)
        with self.tensors.recording() if measuring else contextlib.nullcontext():
            matching = self.matching
            mine, observe = collector(matching.student_names if matching else [])
            out = self.model(x, observe=observe if matching else None).reshape(len(x), -1)
            theirs, observe_teacher = collector(matching.teacher_names if matching else [])
            with torch.no_grad():
                teacher_out = self.teacher(x, observe=observe_teacher if matching else None) if self.teacher is not None else None
                soft = teacher_out.reshape(len(x), -1) if teacher_out is not None else None
            loss = mixed_loss(out, targets, soft, self.task, config.distill_weight, config.temperature, config.label_smoothing)
            if matching:
                loss = loss + HIDDEN_WEIGHT * hidden_loss(mine, theirs, matching)
            if count != batch:
                loss = loss * (count / batch)
        loss.backward()
        if measuring:
            self.tensors.chunk_done()
        return float(loss.item())

    def validate(self) -> tuple[float, float]:
        if self.paired:
            assert self.val.pair is not None
            first, second = (_forward(self.runner, x, 2 * self.batch_size).numpy() for x in (self.val.x, self.val.pair))
            return pair_score(first, second, self.val.y)
        return validation_score(_forward(self.runner, self.val.x, 2 * self.batch_size), self.reference, self.task)

    # -- checkpoints ----------------------------------------------------------------------
    def fingerprint(self) -> str:
        settings = {k: v for k, v in self.config.to_dict().items() if k != "checkpoint_every"}  # may change on resume
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for name, param in self.params.items():
            digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(np.ascontiguousarray(self.train.x).tobytes())
        if self.train.pair is not None:
            digest.update(np.ascontiguousarray(self.train.pair).tobytes())
        if self.train.y is not None:
            digest.update(np.ascontiguousarray(self.train.y).tobytes())
        digest.update(self.origin.encode())  # the starting weights
        digest.update(str(self.world.size).encode())
        return digest.hexdigest()

    def state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint(),
            "step": self.step,
            "order": self.order if self.order is not None else torch.empty(0, dtype=torch.int64),
            "position": self.position,
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "params": {name: p.detach().clone() for name, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "best_metric": list(self.best.metric),
            "best_step": self.best.step,
            "best_weights": self.best.weights,
            "start_metric": list(self.start_metric),
            "losses": self.losses[-50:],
            "seconds": self.elapsed(),
            "text_augmented": [self.text_augment.seen, self.text_augment.augmented] if self.text_augment else [0, 0],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.step, self.position = int(state["step"]), int(state["position"])
        self.order = state["order"] if len(state["order"]) else None
        self.order_generator.set_state(state["order_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.best.metric, self.best.step = tuple(state["best_metric"]), int(state["best_step"])  # type: ignore[assignment]
        self.best.weights = dict(state["best_weights"])
        self.start_metric = tuple(state["start_metric"])  # type: ignore[assignment]
        self.losses = list(state["losses"])
        if self.text_augment is not None:
            self.text_augment.seen, self.text_augment.augmented = (int(v) for v in state.get("text_augmented", (0, 0)))
        self.seconds_before, self.started = float(state["seconds"]), time.perf_counter()


def finetune(
    graph: Graph,
    train: Dataset,
    config: FinetuneConfig,
    teacher: Graph | None = None,
    val: Dataset | None = None,
    progress: Progress = silent,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``graph`` in place within ``config.budget`` and keep the best model on validation.

    With ``checkpoint``, the state is saved there every ``config.checkpoint_every`` seconds
    and on Ctrl-C; ``resume`` continues from it. The checkpoint is removed when the run ends
    by itself. Ctrl-C ends the run early with the best model so far.
    """
    fit_torch_threads()
    if train.y is None and teacher is None and train.pair is None:
        raise InputError(f"{train.source} has no labels and there is no model to distil from", "give labelled --train data")
    if val is None:
        train, val = _split(train, config.val_share, config.seed)
    if config.lr is None:
        config = replace(config, lr=default_lr(graph))
    torch.manual_seed(config.seed)
    with PeakRss() as memory:
        run = _Run(graph, train, val, config, teacher)
        resumed_from = None
        if resume and checkpoint is not None:
            run.restore(checkpoints.load(checkpoint, run.fingerprint()))
            resumed_from = run.step
        outcome = _loop(run, progress, checkpoint)
        run.best.offer(run.validate(), run.params, run.step)
        peft = run.runner.peft
        widened = run.runner.commit(peft.merged(run.best.weights) if peft is not None else run.best.weights)
    if checkpoint is not None and outcome != "interrupted" and run.world.rank == 0:
        checkpoint.unlink(missing_ok=True)
    return _report(run, outcome, resumed_from, widened, memory)


def _loop(run: _Run, progress: Progress, checkpoint: Path | None) -> str:
    """Train until the budget is spent; returns how the run ended."""
    detail = getattr(progress, "detail", None)
    validation = getattr(progress, "validation", None)  # a search reads the curve to stop hopeless trials
    saved = time.perf_counter()
    with StopRequest() as interrupt:
        try:
            while run.spent() < 1.0:
                run.train_step()
                if run.step % run.config.eval_every == 0:
                    metric = run.validate()
                    run.best.offer(metric, run.params, run.step)
                    if validation is not None:
                        validation(metric[0])
                    if run.config.patience and run.step - run.best.step >= run.config.patience * run.config.eval_every:
                        raise _EarlyStop
                if detail is not None:
                    detail(f"{run.remaining()}, loss {np.mean(run.losses[-10:]):.3f}, best {_metric_text(run)}")
                progress(min(int(100 * run.spent()), 100), 100, "fine-tune")
                if run.world.agree_any(interrupt.requested):
                    raise _StopAtStep
                if checkpoint is not None and time.perf_counter() - saved >= run.config.checkpoint_every:
                    run.world.on_first(lambda: checkpoints.save(checkpoint, run.state()))
                    saved = time.perf_counter()
        except _StopAtStep:
            if checkpoint is not None:  # between steps: the state is whole
                run.world.on_first(lambda: checkpoints.save(checkpoint, run.state()))
            progress(100, 100, "fine-tune")
            return "interrupted"
        except KeyboardInterrupt:  # a second Ctrl-C, mid-step: keep the last whole checkpoint
            progress(100, 100, "fine-tune")
            return "interrupted"
        except _EarlyStop:
            progress(100, 100, "fine-tune")
            return "stopped early"
    return "budget spent"


def _metric_text(run: _Run) -> str:
    value = run.best.metric[0]
    if run.task == SIMILARITY:
        return f"validation {'Spearman' if run.val.y is not None else 'recall@1'} {value:.4f}"
    if run.task == "embedding":
        return f"validation cosine {value:.4f}"
    return f"validation MSE {-value:.4g}" if run.task == "regression" else f"validation {100 * value:.1f}%"


def _rates(run: _Run) -> dict[str, Any]:
    lr, deepest = run.config.lr or 0.0, max(run.depths.values(), default=0)  # lr: resolved by finetune()
    return {
        "peak": lr,
        "decay_per_layer": run.config.lr_decay,
        "layer_groups": 1 + deepest,
        "lowest_peak": lr * run.config.lr_decay**deepest,
    }


def _memory(run: _Run, memory: PeakRss) -> dict[str, Any]:
    predicted, state = run.predicted()
    return {
        "budget_bytes": run.config.memory,
        "predicted_bytes": predicted,
        "peak_rss_delta_bytes": memory.delta,
        "peak_rss_bytes": memory.peak,
        "plan": run.plan.to_dict() if run.plan else None,
        "training_state": {
            "budget_bytes": run.config.strategy.sparse,
            "predicted_bytes": state,
            "measured_bytes": run.tensors.peak,
            "note": "saved activations, gradients, optimizer state and trained values, counted tensor by tensor on the"
            f" first {MEASURED_STEPS} steps",
        },
    }


def _report(run: _Run, outcome: str, resumed_from: int | None, widened: int, memory: PeakRss) -> dict[str, Any]:
    config, val = run.config, run.val
    metric = "mse" if run.task == "regression" else "accuracy" if val.y is not None else "top-1 agreement with the unpruned model"
    metric = "cosine to the unpruned model" if run.task == "embedding" else metric
    if run.task == SIMILARITY:
        metric = "Spearman of the pairs' cosines and scores" if val.y is not None else "recall at 1 of each pair's own other side"
    sign = -1.0 if run.task == "regression" else 1.0
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "task": run.task,
        "steps": run.step,
        "epochs": round(run.step / run.steps_per_epoch, 2),
        "seconds": round(run.elapsed(), 3),
        "steps_per_second": round(run.step / max(run.elapsed(), 1e-9), 3),
        **({"distilled_states": run.matching.to_dict()} if run.matching else {}),
        "learning_rate": _rates(run),
        "batch_size": run.batch_size,
        "micro_batch": run.micro_batch,
        "validation": {"data": val.source, "samples": len(val), "metric": metric},
        "metric_before": sign * run.start_metric[0],
        "metric_best": sign * run.best.metric[0],
        "validation_loss_best": -run.best.metric[1] if run.task != "regression" else sign * run.best.metric[0],
        "best_step": run.best.step,
        "final_loss": float(np.mean(run.losses[-10:])) if run.losses else None,
        "outcome": outcome,
        "interrupted": outcome == "interrupted",
        "stopped_early": outcome == "stopped early",
        "resumed_from_step": resumed_from,
        "memory": _memory(run, memory),
        "world_size": run.world.size,
        "deterministic": config.budget.deterministic and outcome != "interrupted",
        "note": "step and epoch budgets repeat exactly with the same seed"
        if config.budget.deterministic
        else "a wall-clock budget is not repeatable: the step count depends on machine load",
    }
    if run.text_augment is not None:
        report["text_augmentation"] = run.text_augment.report()
    if run.runner.peft is not None:
        report["updates"] = {**run.runner.peft.describe(), "zero_biases_added": len(run.zero_biases)}
        if run.lite:
            report["updates"]["lite_residual"] = describe_lite(run.graph)
        if run.sparse is not None:
            report["updates"]["sparse"] = run.sparse.to_dict(layer_costs(run.graph))
    if config.qat:
        report["qat"] = {
            "learned_scales": len(run.runner.log_scales) if isinstance(run.runner, QatRunner) else 0,
            "weight_scales_widened_for_bias": widened,
        }
    return report
