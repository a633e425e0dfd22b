"""Dropping whole transformer layers (``--prune layers:N``).

An encoder layer is found from its two prunable blocks (``transformer.py``): the attention's
output projection and the feed-forward's down projection, each read by a residual add. The
attention add's other operand is the residual stream entering the layer, for a post-norm
(BERT) and a pre-norm (GPT) layer alike. The stream leaving it is the feed-forward add's
output, or, post-norm, the LayerNorm after it (a post-norm layer's attention add is read by
a LayerNorm alone). Consecutive layers must chain, the one's exit being the next one's
entry; then dropping a layer points every reader of its exit at its entry, and the layer's
nodes, now read by nothing, go.

Which layers go: with calibration samples, greedily the one whose removal changes the
model's output least (1 - mean cosine over the samples), re-measured after each drop; without
samples, the top ones (Sajjad et al., "On the Effect of Dropping Layers of Pre-trained
Transformer Models", 2023, found top-layer dropping the most robust).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import Graph
from edgetune.ir.passes import drop_dead
from edgetune.prune.transformer import find_blocks

SCORE_SAMPLES = 64  # calibration samples the output change is measured on


@dataclass(frozen=True)
class EncoderLayer:
    index: int
    entry: str  # the residual stream tensor the layer reads
    exit: str  # the tensor it leaves for the next layer (or the head)
    layers: tuple[str, ...]  # its weighted layers' names, for the report


def find_layers(graph: Graph) -> list[EncoderLayer]:
    """The encoder layers of ``graph`` in order; [] when there are none edgetune can follow."""
    blocks = find_blocks(graph)
    heads = [b for b in blocks if b.kind == "heads"]
    ffns = [b for b in blocks if b.kind == "neurons"]
    if not heads or len(heads) != len(ffns):
        return []
    consumers = graph.consumers()
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    heads.sort(key=lambda b: order[b.columns[0][0].name])
    ffns.sort(key=lambda b: order[b.columns[0][0].name])
    found = []
    post_norm = None
    for index, (attention, ffn) in enumerate(zip(heads, ffns)):
        attention_add = _residual_add(graph, attention.columns[0][0].outputs[0], consumers)
        ffn_add = _residual_add(graph, ffn.columns[0][0].outputs[0], consumers)
        if attention_add is None or ffn_add is None:
            return []
        add, operand = attention_add
        if post_norm is None:
            readers = consumers.get(add.outputs[0], [])
            post_norm = len(readers) == 1 and readers[0].op == "layer_norm"
        exit_ = ffn_add[0].outputs[0]
        if post_norm:
            readers = consumers.get(exit_, [])
            if len(readers) != 1 or readers[0].op != "layer_norm":
                return []
            exit_ = readers[0].outputs[0]
        names = tuple(dict.fromkeys([*attention.layers, *ffn.layers]))
        found.append(EncoderLayer(index, operand, exit_, names))
    if any(a.exit != b.entry for a, b in zip(found, found[1:])):
        return []
    return found


def _residual_add(graph: Graph, tensor: str, consumers: dict[str, list[Any]]) -> tuple[Any, str] | None:
    """The add that reads ``tensor`` (a projection's output) and the residual operand beside it."""
    readers = consumers.get(tensor, [])
    if len(readers) != 1 or readers[0].op != "add" or len(readers[0].inputs) != 2:
        return None
    add = readers[0]
    other = add.inputs[1] if add.inputs[0] == tensor else add.inputs[0]
    if graph.tensors[other].data is not None or graph.tensors[other].shape != graph.tensors[add.outputs[0]].shape:
        return None
    return add, other


def _bypass(graph: Graph, layer: EncoderLayer) -> list[tuple[Any, list[str]]]:
    """Point every reader of the layer's exit at its entry; returns what to restore."""
    saved: list[tuple[Any, list[str]]] = [(node, list(node.inputs)) for node in graph.nodes if layer.exit in node.inputs]
    saved.append((graph, list(graph.outputs)))
    graph.rename_input(layer.exit, layer.entry)
    return saved


def _restore(graph: Graph, saved: list[tuple[Any, list[str]]]) -> None:
    for owner, names in saved:
        if owner is graph:
            graph.outputs = names
        else:
            owner.inputs = names


def _outputs(graph: Graph, samples: np.ndarray) -> np.ndarray:
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    out = run_batches(GraphRunner(graph, quantized=False), samples)
    return np.asarray(out, dtype=np.float64).reshape(len(samples), -1)


def _change(reference: np.ndarray, out: np.ndarray) -> float:
    """1 - the mean cosine between the samples' outputs."""
    dot = (reference * out).sum(1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1)
    return float(1.0 - np.mean(dot / np.maximum(norms, 1e-12)))


def drop_layers(graph: Graph, count: int, samples: np.ndarray | None = None) -> dict[str, Any]:
    """Remove ``count`` encoder layers from ``graph`` in place; the report block."""
    layers = find_layers(graph)
    if not layers:
        raise InputError(
            f"layers:{count} drops transformer encoder layers, and edgetune finds none it can follow in this model",
            "prune channels, heads and neurons instead (channel:RATIO)",
        )
    if count >= len(layers):
        raise InputError(f"layers:{count} would drop all {len(layers)} encoder layers", f"drop at most {len(layers) - 1}")
    kept = list(layers)
    steps: list[dict[str, Any]] = []
    sample = samples[:SCORE_SAMPLES] if samples is not None else None
    for _ in range(count):
        step: dict[str, Any] = {}
        if sample is None:
            chosen = kept[-1]
        else:
            reference = _outputs(graph, sample)
            changes = {}
            for layer in kept:
                saved = _bypass(graph, layer)
                changes[layer.index] = round(_change(reference, _outputs(graph, sample)), 6)
                _restore(graph, saved)
            chosen = min(kept, key=lambda layer: changes[layer.index])
            step["output_change"] = changes  # of each layer still there, had it been dropped
        graph.rename_input(chosen.exit, chosen.entry)
        # the layer above now reads the dropped one's entry
        kept = [
            EncoderLayer(layer.index, chosen.entry if layer.entry == chosen.exit else layer.entry, layer.exit, layer.layers)
            for layer in kept
            if layer is not chosen
        ]
        steps.append({"dropped": chosen.index, **step})
    drop_dead(graph)
    return {
        "before": len(layers),
        "after": len(kept),
        "kept": [layer.index for layer in kept],
        "dropped": sorted(step["dropped"] for step in steps),
        "criterion": f"least output change on {len(sample)} calibration samples, greedy" if sample is not None else "top layers",
        "steps": steps,
    }
