"""Per-layer sensitivity: how much of the int8 error each layer causes on its own.

For every weighted layer, the model runs in float except that one layer, which runs as the
int8 model runs it (its input, weights, bias and output on their grids); the output SQNR
against the float model then says how sensitive the model is to that layer alone. Layers
with the lowest figures are where a wider type, or the float fallback, pays off.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np

from edgetune.evaluate.metrics import sqnr_db
from edgetune.ir.graph import WEIGHTED_OPS, Graph, depthwise_multiplier
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.progress import Progress

SAMPLES = 16


def layer_sensitivity(graph: Graph, samples: np.ndarray, progress: Progress | None = None) -> list[dict[str, Any]]:
    """One row per weighted layer, in execution order: its name, op, weights and the model's
    output SQNR (dB) with only that layer in int8."""
    x = samples[:SAMPLES]
    reference = run_batches(GraphRunner(graph), x)
    layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    rows = []
    for done, node in enumerate(layers, 1):
        keep = {name for name in [*node.inputs, *node.outputs] if name}
        alone = Graph(
            graph.inputs,
            graph.outputs,
            {name: t if name in keep else replace(t, quant=None, qdata=None) for name, t in graph.tensors.items()},
            graph.nodes,
            graph.meta,
        )
        out = run_batches(GraphRunner(alone, quantized=True), x)
        weights = graph.const(node.inputs[1])
        depthwise = depthwise_multiplier(graph, node) > 0
        rows.append(
            {
                "layer": node.name,
                "op": "depthwise" if depthwise else node.op,
                "weights": int(weights.size),
                "sqnr_db": round(float(sqnr_db(reference, out)), 2),
            }
        )
        if progress is not None:
            progress(done, len(layers), "sensitivity")
    return rows


def sensitivity_png(rows: list[dict[str, Any]], title: str) -> bytes:
    """A bar per layer in execution order (lower is more sensitive); the five lowest named."""
    from edgetune.plotting import pyplot

    plt = pyplot("sensitivity.png")
    figure, axis = plt.subplots(figsize=(max(6.0, 0.12 * len(rows) + 2), 3.8), dpi=100)
    values = [row["sqnr_db"] for row in rows]
    colours = ["#c44e52" if row["op"] == "depthwise" else "#4c72b0" for row in rows]
    axis.bar(range(len(rows)), values, color=colours)
    for index in np.argsort(values)[:5]:
        axis.annotate(rows[index]["layer"], (index, values[index]), fontsize=6, rotation=90, ha="center", va="bottom")
    axis.set_xlabel("weighted layer, in execution order (red: depthwise)")
    axis.set_ylabel("output SQNR with only this layer int8 (dB)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
