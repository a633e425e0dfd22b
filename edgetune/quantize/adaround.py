"""AdaRound: learned rounding of weights, layer by layer (Nagel et al., "Up or Down? Adaptive
Rounding for Post-Training Quantization", ICML 2020).

Rounding each weight to its nearest grid point is optimal for the weight alone, not for the
layer's output. AdaRound keeps each weight's choice between rounding down and up as a soft
variable ``h(V) in [0, 1]`` (a rectified sigmoid), minimises the layer's output error on
calibration inputs plus a regulariser that drives every h to 0 or 1, and then rounds hard.

Here the layer sees the inputs of the int8 model whose earlier layers are already rounded,
and its target is the float model's output after the fused activation (the "asymmetric"
reconstruction of the paper's section 4), so each layer also absorbs upstream error. The
output error is measured on a random sample of output positions: the input windows under
those positions are gathered directly, so memory does not grow with the image size.

The budget buys samples and iterations through a cost model (:func:`plan`), and the learning
rate follows the iteration count (:func:`learning_rate`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, depthwise_multiplier
from edgetune.ir.quant import levels_of
from edgetune.ir.stats import graph_macs, node_macs
from edgetune.ir.torch_exec import apply_act, run_preact
from edgetune.progress import Progress
from edgetune.quantize.deadline import Schedule
from edgetune.quantize.layerwise import LayerInputs, quantized_constant, walk
from edgetune.timing import timed

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (paper, eq. 23)
REG_WEIGHT = 0.01  # lambda of the rounding regulariser
BETA = (20.0, 2.0)  # annealed exponent of the regulariser
WARMUP = 0.2  # share of the iterations without the regulariser
POSITIONS_PER_SAMPLE = 64  # output positions per layer and sample that the error is measured on
BATCH = 256  # positions per optimisation step
# Depthwise layers: a channel has 9 or 25 weights, so fewer positions a step still fit them,
# and a depthwise step reads kh * kw values per channel and position (it is memory-bound).
DEPTHWISE_BATCH = 64
# Calibration samples AdaRound reads: the most of these whose setup (the walk, see
# SETUP_SECONDS_PER_MAC) takes at most half the budget. More samples generalise better:
# EfficientNet-Lite2 W4A8 at 60 s, 64 rather than 32 samples: 15.0 dB rather than 14.2 dB.
SAMPLE_COUNTS = (64, 32, 16, 8)
LEARNING_RATES = (1e-2, 1e-1)  # Adam's rate, from long runs to short ones (see learning_rate)
TRAVEL = 5.0  # how far each v can move over the run: learning rate x iterations


@dataclass(frozen=True)
class Plan:
    """What a budget buys, from the cost model (see the end of this module)."""

    samples: int
    positions: int  # per layer
    iterations: int  # per layer
    modeled_s: float


@dataclass
class AdaRoundResult:
    plan: Plan
    budget_s: float
    layers: int = 0
    skipped: list[str] = field(default_factory=list)
    flipped: float = 0.0  # share of weights rounded away from nearest
    seconds: float = 0.0
    shortened: list[str] = field(default_factory=list)  # given fewer iterations by the clock
    nearest: list[str] = field(default_factory=list)  # left at nearest rounding by the clock

    def to_dict(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "layers": self.layers,
            "skipped": self.skipped,
            "iterations_per_layer": self.plan.iterations,
            "learning_rate": round(learning_rate(self.plan.iterations), 4),
            "rounded_away_from_nearest": round(self.flipped, 4),
            "samples": self.plan.samples,
            "positions_per_layer": self.plan.positions,
            "budget_s": round(self.budget_s, 2),
            "modeled_s": round(self.plan.modeled_s, 2),
            "seconds": round(self.seconds, 2),
            "clock": {"shortened_layers": self.shortened, "nearest_layers": self.nearest},
        }
        if self.shortened or self.nearest:
            block["clock"]["note"] = (
                f"this machine ran slower than the cost model: {len(self.shortened)} layer(s) got fewer iterations"
                f" and {len(self.nearest)} kept nearest rounding to hold the budget, so this artifact depends on the machine's speed"
            )
        return block


class _Layer:
    """The layer's output at sampled positions as a function of its weights."""

    def __init__(
        self,
        node: Node,
        depthwise: bool,
        weight_shape: tuple[int, ...],
        x: torch.Tensor,
        out_shape: torch.Size,
        positions: int,
        generator: torch.Generator,
    ):
        self.node = node
        self.depthwise = depthwise
        self.batch = DEPTHWISE_BATCH if self.depthwise else BATCH
        n = x.shape[0]
        if node.op == "linear":
            count = min(positions, n)
            self.index = torch.randperm(n, generator=generator)[:count]
            self.windows = x[self.index]
            return
        top, left = node.attrs["pads"][:2]
        (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs["dilation"]
        kh, kw = weight_shape[2], weight_shape[3]
        height, width = out_shape[2], out_shape[3]
        count = min(positions, n * height * width)
        self.index = torch.randperm(n * height * width, generator=generator)[:count]
        self.sample = self.index // (height * width)
        self.oy, self.ox = (self.index % (height * width)) // width, self.index % width
        # Input rows and columns under each window, (P, kh) and (P, kw); those in the padding
        # read row or column 0 and are then zeroed (no padded copy of the whole input).
        rows = (self.oy * sh - top)[:, None] + torch.arange(kh) * dh
        cols = (self.ox * sw - left)[:, None] + torch.arange(kw) * dw
        inside = ((rows >= 0) & (rows < x.shape[2]))[:, :, None] & ((cols >= 0) & (cols < x.shape[3]))[:, None, :]
        rows, cols = rows.clamp(0, x.shape[2] - 1), cols.clamp(0, x.shape[3] - 1)
        # Advanced indices on batch, rows and columns around the channel slice: (P, kh, kw, C).
        windows = x[self.sample[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        windows = torch.where(inside[..., None], windows, torch.zeros((), dtype=windows.dtype))
        # (P, C * kh * kw) in the weight's (C, kh, kw) order; depthwise: (P, C, kh * kw), one
        # small dot product per channel (a product and a sum beat a batched matrix product there).
        windows = windows.permute(0, 3, 1, 2).reshape(count, windows.shape[3], kh * kw)
        self.windows = (windows if self.depthwise else windows.reshape(count, -1)).contiguous()

    def output(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), Cout) pre-activation outputs at the sampled positions ``rows``."""
        if self.depthwise:
            out = (self.windows[rows] * weight.reshape(weight.shape[0], -1)).sum(-1)
        else:
            out = self.windows[rows] @ weight.reshape(weight.shape[0], -1).T
        return out + bias if bias is not None else out

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The sampled positions of a full (N, C, H, W) or (N, C) output, as (P, C)."""
        if self.node.op == "linear":
            return full[self.index]
        return full[self.sample, :, self.oy, self.ox]


def _soft(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def round_layer(
    node: Node,
    weight: np.ndarray,
    scale: np.ndarray,
    qmax: int,
    layer: _Layer,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    iterations: int,
    stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, float]:
    """Learned integer levels of ``weight`` (symmetric, per-channel ``scale`` along axis 0),
    returned as ``levels * scale``, and the share rounded away from nearest. ``stop``, asked
    every few steps, ends the optimisation early (the deadline has passed)."""
    w = torch.from_numpy(weight.astype(np.float32))
    s = torch.from_numpy(scale.astype(np.float32)).reshape((-1,) + (1,) * (weight.ndim - 1))
    floor = torch.floor(w / s)
    rest = (w / s - floor).clamp(0.01, 0.99)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)  # h(v) == rest at the start
    with torch.enable_grad():
        optimizer = torch.optim.Adam([v], lr=learning_rate(iterations))
        generator = torch.Generator().manual_seed(0)
        count = target.shape[0]
        for step in range(iterations):
            if stop is not None and step % STOP_EVERY == 0 and step and stop():
                break
            rows = torch.randint(0, count, (min(layer.batch, count),), generator=generator)
            h = _soft(v)
            levels = torch.clamp(floor + h, -qmax, qmax)
            out = apply_act(layer.output(levels * s, bias, rows), node.act)
            loss = F.mse_loss(out, target[rows])
            loss = loss + _regulariser(h, step / iterations) / target.shape[1]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        levels = torch.clamp(floor + (v >= 0).float(), -qmax, qmax)
        nearest = torch.clamp(torch.round(w / s), -qmax, qmax)
        flipped = float((levels != nearest).float().mean())
    return (levels * s).numpy().astype(np.float32), flipped


def _regulariser(h: torch.Tensor, progress: float) -> torch.Tensor:
    """Pushes every h(v) to 0 or 1, with an exponent annealed from sharp to flat (paper, eq. 24)."""
    if progress < WARMUP:
        return torch.zeros(())
    beta = BETA[1] + (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * (progress - WARMUP) / (1 - WARMUP))) / 2
    return REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).sum()


def learning_rate(iterations: int) -> float:
    """Adam moves each v by about the learning rate a step, and v starts within about 2.3 of
    the point where its rounding flips: a short run needs a larger rate to get anywhere.
    On EfficientNet-Lite2 W8A8 at 55 iterations, 0.1 instead of 0.01 gives 25.9 dB
    instead of 21.3 dB; with a long run (2000 iterations) the rate stays at 0.01."""
    return float(np.clip(TRAVEL / iterations, *LEARNING_RATES))


def roundable(graph: Graph, node: Node) -> bool:
    """Linear layers, plain convolutions and depthwise ones without a channel multiplier;
    other grouped convolutions keep their nearest rounding."""
    if node.op != "conv2d":  # a linear layer over steps keeps nearest rounding (its samples are not rows)
        return node.op == "linear" and len(graph.tensors[node.inputs[0]].shape) == 2
    weight_shape = graph.tensors[node.inputs[1]].shape
    groups = node.attrs["groups"]
    return bool(groups == 1 or (weight_shape[1] == 1 and weight_shape[0] == groups))


def plan(graph: Graph, available: int, budget_s: float) -> Plan:
    """Samples, positions and iterations that ``budget_s`` seconds buy on ``graph``."""
    macs = graph_macs(graph)
    for count in SAMPLE_COUNTS:
        samples = min(count, available)
        setup_s = samples * macs * SETUP_SECONDS_PER_MAC
        if setup_s <= budget_s / 2:
            break
    positions = POSITIONS_PER_SAMPLE * samples
    per_round = sum(_layer_cost(graph, node, samples, positions).step_seconds() for node in graph.nodes if roundable(graph, node))
    iterations = int(np.clip((budget_s - setup_s) / max(per_round, 1e-9), MIN_ITERATIONS, MAX_ITERATIONS))
    return Plan(samples, positions, iterations, setup_s + iterations * per_round)


def modeled_layers(graph: Graph, planned: Plan) -> dict[str, float]:
    """Modeled seconds of each weighted layer, in order: its share of the walk's setup (by its
    multiply-accumulates) and, when it is rounded, its steps."""
    macs = {node.name: node_macs(graph, node) for node in graph.nodes if node.op in WEIGHTED_OPS}
    total = sum(macs.values()) or 1
    setup = planned.samples * graph_macs(graph) * SETUP_SECONDS_PER_MAC
    costs = {}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            steps = _layer_cost(graph, node, planned.samples, planned.positions).step_seconds() * planned.iterations
            costs[node.name] = setup * macs.get(node.name, 0) / total + (steps if roundable(graph, node) else 0.0)
    return costs


def _layer_cost(graph: Graph, node: Node, samples: int, positions: int) -> LayerCost:
    weights = graph.const(node.inputs[1]).size
    depthwise = depthwise_multiplier(graph, node) > 0
    available = samples * int(np.prod(graph.tensors[node.outputs[0]].shape[2:])) if node.op == "conv2d" else samples
    return LayerCost(weights, min(DEPTHWISE_BATCH if depthwise else BATCH, positions, available), depthwise)


@timed("adaround")
def adaround(
    graph: Graph, samples: np.ndarray, budget_s: float, progress: Progress | None = None, deadline: float | None = None
) -> AdaRoundResult:
    """Round every plain, depthwise and linear layer's weights in place, within ``budget_s`` seconds.

    The budget is turned into a sample count and one iteration count for all layers by a
    fixed cost model (:func:`plan`), so the result does not depend on the machine's speed. The
    clock holds it all the same: ``deadline`` (a ``time.perf_counter()`` value; default: the
    start plus the budget) is kept by giving the layers left fewer iterations when the machine
    falls behind the model (:class:`Schedule`); the report gives budget, modeled and actual time.
    """
    start = time.perf_counter()
    result = AdaRoundResult(plan(graph, len(samples), budget_s), budget_s)
    weighted = [n for n in graph.nodes if n.op in WEIGHTED_OPS]
    total_size = sum(graph.const(n.inputs[1]).size for n in weighted) or 1
    generator = torch.Generator().manual_seed(0)
    schedule = Schedule(start + budget_s if deadline is None else deadline, modeled_layers(graph, result.plan), start)

    def visit(inputs: LayerInputs) -> torch.Tensor | None:
        node = inputs.node
        tensor = graph.tensors[node.inputs[1]]
        weight, q = tensor.int8_source, tensor.quant
        assert weight is not None and q is not None and inputs.x_quant is not None
        iterations = schedule.share(node.name, result.plan.iterations) if roundable(graph, node) else 0
        if not roundable(graph, node) or iterations < CLOCK_MIN_ITERATIONS:
            (result.skipped if not roundable(graph, node) else result.nearest).append(node.name)  # rounded to nearest
            schedule.done(node.name)
            return None
        scale = q.scale if q.axis is not None else np.full(weight.shape[0], q.scale[0], np.float32)
        depthwise = depthwise_multiplier(graph, node) > 0
        layer = _Layer(node, depthwise, weight.shape, inputs.x_quant, inputs.z_float.shape, result.plan.positions, generator)
        target = apply_act(layer.take(inputs.z_float), node.act)
        bias = quantized_constant(graph, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        levels = levels_of(graph.meta, node.inputs[1])
        tensor.qdata, flipped = round_layer(node, weight, scale, levels, layer, target, bias, iterations, schedule.passed)
        schedule.done(node.name)
        result.layers += 1
        result.flipped += flipped * weight.size
        return run_preact(node, inputs.x_quant, [quantized_constant(graph, n) for n in node.inputs[1:] if n])

    walk(graph, samples[: result.plan.samples], visit, progress=progress, stage="adaround", stop=schedule.passed)
    result.nearest += [n.name for n in weighted if n.name in schedule.remaining and roundable(graph, n)]  # not reached in time
    result.shortened = [name for name in schedule.shortened if name not in result.nearest]
    result.flipped /= total_size
    result.seconds = time.perf_counter() - start
    return result


MIN_ITERATIONS, MAX_ITERATIONS = 20, 2000
CLOCK_MIN_ITERATIONS = 10  # fewer than this, when the clock cuts a layer short, and it keeps nearest rounding
STOP_EVERY = 8  # steps between looks at the clock inside one layer
# The budget becomes iterations through a fixed cost model rather than a clock, so the same
# inputs give the same artifact on any machine. A step costs a fixed overhead, a time per
# rounding variable (the soft rounding, the regulariser and Adam's update touch each one) and a
# time per multiply-accumulate of its positions, forward and backward; a depthwise one costs
# far more, as it reads a fresh input value for each. Fitted on a 2-vCPU AVX-512 machine
# (EfficientNet-Lite2's 65 layers, within 15% in total), then rounded up by about 10%.
STEP_OVERHEAD_S = 1.4e-3
SECONDS_PER_WEIGHT = 2e-8
SECONDS_PER_MAC = 3.8e-11
SECONDS_PER_DEPTHWISE_MAC = 2.2e-9
# Before any step, the walk runs the float and the int8-simulated model over the samples and
# gathers each layer's windows: per sample, about this much per multiply-accumulate of the
# model (EfficientNet-Lite2: 8 s for 32 samples, 21 s for 64).
SETUP_SECONDS_PER_MAC = 5.5e-10


@dataclass(frozen=True)
class LayerCost:
    weights: int
    positions: int  # per step
    depthwise: bool

    def step_seconds(self) -> float:
        per_mac = SECONDS_PER_DEPTHWISE_MAC if self.depthwise else SECONDS_PER_MAC
        return STEP_OVERHEAD_S + SECONDS_PER_WEIGHT * self.weights + per_mac * self.positions * self.weights
