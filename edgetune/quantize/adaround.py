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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgetune.ir.graph import Graph, Node
from edgetune.ir.torch_exec import apply_act, run_preact
from edgetune.quantize.calibrate import WEIGHTED_OPS
from edgetune.quantize.layerwise import LayerInputs, Progress, quantized_constant, walk
from edgetune.quantize.params import levels_of

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (paper, eq. 23)
REG_WEIGHT = 0.01  # lambda of the rounding regulariser
BETA = (20.0, 2.0)  # annealed exponent of the regulariser
WARMUP = 0.2  # share of the iterations without the regulariser
POSITIONS = 2048  # output positions per layer that the error is measured on
BATCH = 256  # positions per optimisation step
SAMPLES = 32
LEARNING_RATE = 1e-2


@dataclass
class AdaRoundResult:
    layers: int = 0
    skipped: list[str] = field(default_factory=list)
    iterations: int = 0
    flipped: float = 0.0  # share of weights rounded away from nearest
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "skipped": self.skipped,
            "iterations_per_layer": self.iterations,
            "rounded_away_from_nearest": round(self.flipped, 4),
            "samples": SAMPLES,
            "positions_per_layer": POSITIONS,
            "seconds": round(self.seconds, 2),
        }


class _Layer:
    """The layer's output at sampled positions as a function of its weights."""

    def __init__(self, node: Node, weight_shape: tuple[int, ...], x: torch.Tensor, out_shape: torch.Size, generator: torch.Generator):
        self.node = node
        self.depthwise = node.op == "conv2d" and node.attrs["groups"] > 1
        n = x.shape[0]
        if node.op == "linear":
            count = min(POSITIONS, n)
            self.index = torch.randperm(n, generator=generator)[:count]
            self.windows = x[self.index]
            return
        top, left, bottom, right = node.attrs["pads"]
        padded = F.pad(x, (left, right, top, bottom))
        (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs["dilation"]
        kh, kw = weight_shape[2], weight_shape[3]
        height, width = out_shape[2], out_shape[3]
        count = min(POSITIONS, n * height * width)
        self.index = torch.randperm(n * height * width, generator=generator)[:count]
        sample, rest = self.index // (height * width), self.index % (height * width)
        oy, ox = rest // width, rest % width
        rows = (oy * sh)[:, None] + torch.arange(kh) * dh  # (P, kh)
        cols = (ox * sw)[:, None] + torch.arange(kw) * dw  # (P, kw)
        # Advanced indexing on batch, rows and columns of the NHWC input: (P, kh, kw, C).
        windows = padded.permute(0, 2, 3, 1)[sample[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.depthwise:  # (C, P, kh * kw): one small matrix product per channel
            self.windows = windows.permute(3, 0, 1, 2).reshape(windows.shape[3], count, kh * kw).contiguous()
        else:  # (P, C * kh * kw), in the weight's (C, kh, kw) order
            self.windows = windows.permute(0, 3, 1, 2).reshape(count, -1).contiguous()

    def output(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), Cout) pre-activation outputs at the sampled positions ``rows``."""
        if self.depthwise:
            channels = weight.shape[0]
            out = torch.bmm(self.windows[:, rows], weight.reshape(channels, -1, 1)).squeeze(-1).T
        else:
            out = self.windows[rows] @ weight.reshape(weight.shape[0], -1).T
        return out + bias if bias is not None else out

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The sampled positions of a full (N, C, H, W) or (N, C) output, as (P, C)."""
        if self.node.op == "linear":
            return full[self.index]
        flat = full.permute(0, 2, 3, 1).reshape(-1, full.shape[1])
        return flat[self.index]


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
) -> tuple[np.ndarray, float]:
    """Learned integer levels of ``weight`` (symmetric, per-channel ``scale`` along axis 0),
    returned as ``levels * scale``, and the share rounded away from nearest."""
    w = torch.from_numpy(weight.astype(np.float32))
    s = torch.from_numpy(scale.astype(np.float32)).reshape((-1,) + (1,) * (weight.ndim - 1))
    floor = torch.floor(w / s)
    rest = (w / s - floor).clamp(0.01, 0.99)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)  # h(v) == rest at the start
    with torch.enable_grad():
        optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
        generator = torch.Generator().manual_seed(0)
        count = target.shape[0]
        for step in range(iterations):
            rows = torch.randint(0, count, (min(BATCH, count),), generator=generator)
            levels = torch.clamp(floor + _soft(v), -qmax, qmax)
            out = apply_act(layer.output(levels * s, bias, rows), node.act)
            loss = F.mse_loss(out, target[rows])
            loss = loss + _regulariser(v, step / iterations) / target.shape[1]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        levels = torch.clamp(floor + (v >= 0).float(), -qmax, qmax)
        nearest = torch.clamp(torch.round(w / s), -qmax, qmax)
        flipped = float((levels != nearest).float().mean())
    return (levels * s).numpy().astype(np.float32), flipped


def _regulariser(v: torch.Tensor, progress: float) -> torch.Tensor:
    """Pushes every h(v) to 0 or 1, with an exponent annealed from sharp to flat (paper, eq. 24)."""
    if progress < WARMUP:
        return torch.zeros(())
    beta = BETA[1] + (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * (progress - WARMUP) / (1 - WARMUP))) / 2
    return REG_WEIGHT * (1 - (2 * _soft(v) - 1).abs().pow(beta)).sum()


def adaround(graph: Graph, samples: np.ndarray, budget_s: float, progress: Progress | None = None) -> AdaRoundResult:
    """Round every plain, depthwise and linear layer's weights in place, within ``budget_s`` seconds.

    The budget is turned into one iteration count for all layers by a fixed cost model (:func:`planned_iterations`), so the result does not
    depend on the machine's speed; the report gives the seconds actually spent.
    """
    result = AdaRoundResult()
    start = time.perf_counter()
    weighted = [n for n in graph.nodes if n.op in WEIGHTED_OPS]
    sizes = [graph.const(n.inputs[1]).size for n in weighted]
    iterations = planned_iterations(budget_s, sizes)
    total_size = sum(sizes) or 1
    generator = torch.Generator().manual_seed(0)

    def visit(inputs: LayerInputs) -> torch.Tensor | None:
        node = inputs.node
        tensor = graph.tensors[node.inputs[1]]
        weight, q = tensor.int8_source, tensor.quant
        assert weight is not None and q is not None and inputs.x_quant is not None
        if node.op == "conv2d" and node.attrs["groups"] > 1 and weight.shape[1] != 1:
            result.skipped.append(node.name)  # grouped but not depthwise: rounded to nearest
            return None
        scale = q.scale if q.axis is not None else np.full(weight.shape[0], q.scale[0], np.float32)
        layer = _Layer(node, weight.shape, inputs.x_quant, inputs.z_float.shape, generator)
        target = apply_act(layer.take(inputs.z_float), node.act)
        bias = quantized_constant(graph, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        levels = levels_of(graph.meta, node.inputs[1])
        tensor.qdata, flipped = round_layer(node, weight, scale, levels, layer, target, bias, iterations)
        result.layers += 1
        result.flipped += flipped * weight.size
        return run_preact(node, inputs.x_quant, [quantized_constant(graph, n) for n in node.inputs[1:] if n])

    walk(graph, samples[:SAMPLES], visit, progress=progress, stage="adaround")
    result.flipped /= total_size
    result.iterations = iterations
    result.seconds = time.perf_counter() - start
    return result


MIN_ITERATIONS, MAX_ITERATIONS = 20, 2000
# The budget becomes iterations through a fixed cost model rather than a clock, so the same
# inputs give the same artifact on any machine: a step costs a fixed overhead plus its
# multiply-accumulates (forward and backward, about 6 flops each) at a modest CPU rate.
STEP_OVERHEAD_S = 2e-3
FLOPS_PER_S = 2e10


def planned_iterations(seconds: float, layer_weights: list[int]) -> int:
    """Iterations per layer (the same for every layer) that the budget buys for all layers."""
    per_round = sum(STEP_OVERHEAD_S + 6 * BATCH * size / FLOPS_PER_S for size in layer_weights)
    return int(np.clip(seconds / max(per_round, 1e-9), MIN_ITERATIONS, MAX_ITERATIONS))
