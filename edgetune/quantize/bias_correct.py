"""Empirical bias correction (Nagel et al. 2019, section 4.2; the "empirical" variant).

Rounding weights to int8 shifts each output channel's mean: ``E[W_q x_q] != E[W x]``. The
shift is systematic (the same for every input), so it can be taken out of the bias. Walking
the layers in order over calibration samples, each layer compares its pre-activation
output in the float model with that in the int8 model, whose earlier layers are already
corrected, and adds the mean difference per output channel to its bias. The bias is then
quantized again on its int32 grid.

The mean is estimated from few samples, so each channel's correction is shrunk by how well
its sample mean is known (positive-part James-Stein: ``shift * max(0, 1 - se^2 / shift^2)``,
with the standard error from per-sample means): a shift lost in noise is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgetune.ir.graph import Graph
from edgetune.ir.torch_exec import run_preact, stat_sample_count
from edgetune.progress import Progress
from edgetune.quantize.calibrate import requantize_bias, settle_shared_weights
from edgetune.quantize.equalize import ensure_bias
from edgetune.quantize.layerwise import LayerInputs, quantized_constant, walk
from edgetune.timing import timed


@dataclass
class BiasCorrection:
    layers: int = 0
    samples: int = 0
    shift_before: list[float] = field(default_factory=list)  # per layer: mean |shift| / output std, before
    kept: list[float] = field(default_factory=list)  # per layer: share of the measured shift applied

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "samples": self.samples,
            "median_relative_shift": float(np.median(self.shift_before)) if self.shift_before else None,
            "median_share_applied": float(np.median(self.kept)) if self.kept else None,
            "note": "relative shift: a layer's mean |float - int8| channel mean over its output's standard deviation, before correction;"
            " share applied: what is left of the shift after shrinking it by its standard error",
        }


@timed("bias correction")
def correct_biases(graph: Graph, samples: np.ndarray, progress: Progress | None = None) -> BiasCorrection:
    """Correct every weighted layer's bias in place (the graph is calibrated)."""
    result = BiasCorrection()

    def visit(inputs: LayerInputs) -> torch.Tensor:
        node, expected = inputs.node, inputs.z_float
        assert inputs.x_quant is not None
        quant_args = [quantized_constant(graph, n) for n in node.inputs[1:] if n]
        weight_q = graph.tensors[node.inputs[1]].quant
        actual = run_preact(node, inputs.x_quant, quant_args)
        per_sample = (expected - actual).to(torch.float64)
        features_last = node.op == "linear" and per_sample.ndim > 2  # a linear layer over steps
        if features_last:
            per_sample = per_sample.movedim(-1, 1)
        if per_sample.ndim > 2:
            per_sample = per_sample.mean(dim=list(range(2, per_sample.ndim)))
        measured = per_sample.mean(dim=0).numpy()
        error = (per_sample.std(dim=0) / np.sqrt(per_sample.shape[0])).numpy() if per_sample.shape[0] > 1 else np.zeros_like(measured)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(measured != 0, np.clip(1 - (error / measured) ** 2, 0, 1), 0.0)
        shift = measured * shrink
        spread = float(expected.std()) or 1.0
        result.shift_before.append(float(np.abs(measured).mean()) / spread)
        total = float(np.abs(measured).sum())
        result.kept.append(float(np.abs(shift).sum()) / total if total else 0.0)
        bias_name = ensure_bias(graph, node)
        tensor = graph.tensors[bias_name]
        assert tensor.int8_source is not None
        had_bias = len(quant_args) > 1
        old_bias = quant_args[1] if had_bias else torch.zeros(0)
        tensor.qdata = (tensor.int8_source.astype(np.float64) + shift).astype(np.float32)
        requantize_bias(graph, node)
        result.layers += 1
        if not had_bias or not graph.tensors[node.inputs[1]].quant.same_as(weight_q):  # type: ignore[union-attr]
            return run_preact(node, inputs.x_quant, [quantized_constant(graph, n) for n in node.inputs[1:] if n])
        step = quantized_constant(graph, bias_name) - old_bias
        if not features_last:
            step = step.reshape([-1] + [1] * (actual.ndim - 2))
        return actual + step

    result.samples = stat_sample_count(samples)
    walk(graph, samples[: result.samples], visit, progress=progress, stage="bias correction")
    settle_shared_weights(graph)  # a step of a GRU may have widened the weight the other steps read
    return result
