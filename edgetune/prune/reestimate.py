"""BatchNorm re-estimation after pruning, on the folded graph.

Pruning removes input channels (or weights) of later layers, so the statistics their
BatchNorm was trained with no longer hold: a channel's mean drifts and its spread shrinks,
and every following layer sees inputs it was not trained on. Recomputing the BatchNorm
statistics on a few batches of data recovers much of the accuracy lost, with no training
(the "adaptive BatchNorm" of Li et al. 2020, EagleEye, section 3.2).

The captured graph has BatchNorm folded into the conv or linear before it (marked
``batchnorm`` by the fold), so the layer's output *is* the normalized value: about
``beta + gamma * (z - mean) / std``. Re-estimating the statistics therefore means giving
each output channel, before its activation, the mean and standard deviation it had before
pruning, measured on the same calibration samples. That is one per-channel affine map,
folded into the layer's weights and bias. Layers are corrected in execution order, each
seeing the inputs of the layers already corrected before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, Tensor
from edgetune.ir.torch_exec import KERNELS, apply_act, bind_inputs, run_preact, stat_sample_count

# A channel whose spread fell below this share of its old one carries no signal to
# rescale: only its mean is restored.
DEAD = 1e-3
# Below this relative change a layer is left exactly as it was (layers before the first
# pruned one see the same inputs and must not move by float rounding).
UNCHANGED = 1e-5


def samples_used(samples: np.ndarray) -> np.ndarray:
    return samples[: stat_sample_count(samples)]


def _normalized(node: Node) -> bool:
    return node.op in WEIGHTED_OPS and bool(node.attrs.get("batchnorm"))


def _channel_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (axis 1) mean and standard deviation over every other axis."""
    flat = z.transpose(0, 1).reshape(z.shape[1], -1).double()
    return flat.mean(dim=1), flat.std(dim=1, unbiased=False)


LayerHook = Callable[[Node, torch.Tensor, list[torch.Tensor]], torch.Tensor]


def _walk(graph: Graph, x: torch.Tensor, at_layer: LayerHook) -> None:
    """Run ``graph`` node by node; ``at_layer(node, inputs, constants)`` returns a normalized
    layer's pre-activation output (and may change the layer first)."""
    values: dict[str, torch.Tensor] = bind_inputs(graph, x)
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    with torch.no_grad():
        for node in graph.nodes:
            args = [values[n] if n in values else torch.from_numpy(graph.const(n)) for n in node.inputs if n]
            if _normalized(node):
                values[node.outputs[0]] = apply_act(at_layer(node, args[0], args[1:]), node.act)
            else:
                values[node.outputs[0]] = KERNELS[node.op](node, args)
            for name in node.inputs:  # free what no later node reads
                readers[name] -= 1
                if readers[name] == 0 and name in values and name not in graph.outputs:
                    del values[name]


def reference_stats(graph: Graph, samples: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each normalized layer's per-channel pre-activation mean and std on ``samples``."""
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def record(node: Node, x: torch.Tensor, constants: list[torch.Tensor]) -> torch.Tensor:
        z = run_preact(node, x, constants)
        mean, std = _channel_stats(z)
        stats[node.name] = (mean.numpy(), std.numpy())
        return z

    _walk(graph, torch.from_numpy(np.ascontiguousarray(samples_used(samples))), record)
    return stats


def reestimate(
    graph: Graph,
    reference: Mapping[str, tuple[np.ndarray, np.ndarray]],
    samples: np.ndarray,
    kept: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Give every normalized layer of the pruned ``graph`` its ``reference`` channel
    statistics back, in place. ``kept[name]`` lists which of a layer's original output
    channels it still has (all of them when absent). The report block."""
    kept = kept or {}
    used = samples_used(samples)
    drift: list[float] = []  # per corrected layer: mean |mean shift| / reference std, before
    spread: list[float] = []  # per corrected layer: median std ratio (pruned / reference), before

    def correct(node: Node, x: torch.Tensor, constants: list[torch.Tensor]) -> torch.Tensor:
        z = run_preact(node, x, constants)
        if node.name not in reference:
            return z
        index = kept.get(node.name)
        want_mean, want_std = (a if index is None else a[index] for a in reference[node.name])
        mean, std = (t.numpy() for t in _channel_stats(z))
        if want_mean.shape != mean.shape:  # a layer the pruning reshaped in a way we cannot map
            return z
        scale_ref = np.maximum(want_std, 1e-12)
        shift = np.abs(mean - want_mean) / scale_ref
        ratio = std / scale_ref
        if shift.max() < UNCHANGED and np.abs(ratio - 1.0).max() < UNCHANGED:
            return z
        drift.append(float(shift.mean()))
        spread.append(float(np.median(ratio)))
        # z' = a * (z - mean) + want_mean, folded into the layer: W' = a W, b' = a (b - mean) + want_mean
        gain = np.where(std > DEAD * scale_ref, want_std / np.maximum(std, 1e-12), 1.0)
        weight_name = node.inputs[1]
        weight = graph.const(weight_name)
        bias = graph.const(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(weight.shape[0], np.float32)
        new_weight = (weight * gain.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
        new_bias = (gain * (bias - mean) + want_mean).astype(np.float32)
        graph.tensors[weight_name].data = new_weight
        if len(node.inputs) > 2:
            graph.tensors[node.inputs[2]].data = new_bias
        else:
            name = f"{node.name}.bias.reestimated"
            graph.tensors[name] = Tensor(name, tuple(new_bias.shape), new_bias)
            node.inputs.append(name)
        return run_preact(node, x, [torch.from_numpy(new_weight), torch.from_numpy(new_bias)])

    _walk(graph, torch.from_numpy(np.ascontiguousarray(used)), correct)
    return {
        "layers": len(drift),
        "samples": len(used),
        "median_mean_shift": round(float(np.median(drift)), 4) if drift else None,
        "median_std_ratio": round(float(np.median(spread)), 4) if spread else None,
        "note": "BatchNorm statistics re-estimated after pruning: each layer whose BatchNorm was folded into it gets back, per"
        " channel, the pre-activation mean and std it had before pruning on the same calibration samples; mean shift in units"
        " of that std and std ratio pruned/before are measured before correction",
    }
