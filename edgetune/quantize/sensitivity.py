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


SHOWN = 40  # layers a readable plot names; a deeper model shows its most sensitive ones


def shown_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the plot draws, in execution order: all of them, or the ``SHOWN`` lowest."""
    if len(rows) <= SHOWN:
        return rows
    lowest = set(np.argsort([row["sqnr_db"] for row in rows], kind="stable")[:SHOWN].tolist())
    return [row for index, row in enumerate(rows) if index in lowest]


def sensitivity_png(rows: list[dict[str, Any]], title: str) -> bytes:
    """One horizontal bar per weighted layer, named, top to bottom in execution order (a shorter
    bar is a more sensitive layer); the five most sensitive are labelled with their SQNR."""
    from edgetune.plotting import pyplot

    plt = pyplot("sensitivity.png")
    shown = shown_rows(rows)
    figure, axis = plt.subplots(figsize=(7.0, 0.24 * len(shown) + 1.6), dpi=100)
    values = [row["sqnr_db"] for row in shown]
    colours = ["#c44e52" if row["op"] == "depthwise" else "#4c72b0" for row in shown]
    positions = np.arange(len(shown))[::-1]  # the first layer on top
    axis.barh(positions, values, color=colours, height=0.7)
    axis.set_yticks(positions, [row["layer"] for row in shown], fontsize=7)
    for index in np.argsort(values, kind="stable")[:5]:
        axis.annotate(f" {values[index]:.1f} dB", (values[index], positions[index]), fontsize=7, va="center")
    axis.set_xlim(min(values + [0.0]) * 1.12, max(values + [1.0]) * 1.12)
    axis.set_xlabel("output SQNR with only this layer in int8 (dB; lower is more sensitive)", fontsize=8)
    if len(shown) < len(rows):
        title += f" ({len(shown)} most sensitive of {len(rows)} layers)"
    axis.set_title(f"{title}\nred: depthwise", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
