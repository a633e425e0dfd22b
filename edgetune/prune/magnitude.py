"""Unstructured magnitude pruning: zero the smallest weights of convs and linear layers.

Dense runtimes (ONNX Runtime, TFLite's CPU kernels, XNNPACK) do not skip zeros, so this
makes nothing faster: its gain is a smaller compressed artifact. The zeros stay exact
through int8 quantization (symmetric weights, zero point 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.prune.config import PruneConfig
from edgetune.prune.reestimate import reestimate, reference_stats

NOTE = "unstructured sparsity: dense runtimes run it no faster; the gain is the compressed (gzip) artifact size"


def prune_magnitude(graph: Graph, config: PruneConfig, samples: np.ndarray | None = None) -> dict[str, Any]:
    """Zero ``config.ratio`` of the weights in place; with ``samples``, re-estimate the folded
    BatchNorm statistics afterwards. The report block."""
    reference = reference_stats(graph, samples) if config.reestimate and samples is not None else None
    weights = [node.inputs[1] for node in graph.nodes if node.op in WEIGHTED_OPS]
    magnitudes = {name: np.abs(graph.const(name)) for name in weights}
    if config.allocation == "global":
        everything = np.concatenate([m.ravel() for m in magnitudes.values()])
        thresholds = dict.fromkeys(weights, _threshold(everything, config.ratio))
    else:
        thresholds = {name: _threshold(m.ravel(), config.ratio) for name, m in magnitudes.items()}
    layers: list[dict[str, Any]] = []
    total = zeros = 0
    for name in weights:
        data = graph.const(name)
        keep = magnitudes[name] > thresholds[name]
        graph.tensors[name].data = np.where(keep, data, np.float32(0.0)).astype(np.float32)
        zeroed = int(data.size - keep.sum())
        total, zeros = total + int(data.size), zeros + zeroed
        layers.append({"weight": name, "parameters": int(data.size), "sparsity": round(zeroed / max(data.size, 1), 4)})
    report = {"config": config.to_dict(), "sparsity": round(zeros / max(total, 1), 4), "layers": layers, "note": NOTE}
    if reference and samples is not None:
        report["batchnorm"] = reestimate(graph, reference, samples)  # zeros stay zero: the map only scales
    return report


def _threshold(values: np.ndarray, ratio: float) -> float:
    """The magnitude at or below which ``ratio`` of ``values`` fall (ties at the threshold go too)."""
    if ratio <= 0.0 or values.size == 0:
        return -1.0
    count = int(round(ratio * values.size))
    if count == 0:
        return -1.0
    return float(np.partition(values, count - 1)[count - 1])
