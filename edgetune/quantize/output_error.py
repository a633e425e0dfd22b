"""Activation ranges chosen per tensor by the model's output error (``--method output``).

A range method (min/max, percentile, MSE) judges a range by the error it leaves in the
tensor itself. Here each tensor instead takes, of the ranges the three methods found for it,
the one that moves the model's output least when that tensor alone is quantized and every
other tensor stays float: the float model runs once over a few calibration samples, and
from each observed tensor on, the rest of the graph runs again once per candidate range.
That is exact for one tensor at a time (clipping errors add up coherently downstream, which
a first-order, gradient-weighted estimate of the same error misses); it ignores how the
tensors' errors interact, as a per-layer sensitivity does.

What it buys is small on the models measured (output SQNR against MSE everywhere, test
data): with per-tensor weights +0.2 dB on the digits CNN and +0.4 dB on MobileNetV2 on
digits; with per-channel weights -0.0 and -0.1 dB there, and +0.05 dB on
EfficientNet-Lite2, where it takes 55 s. ``--ptq best`` does not try it: as one more
held-out trial on MobileNetV2-digits (per channel) its cost alone, taken from AdaRound's
share of the budget, moved the result from 29.4 to 28.8 dB, below ONNX Runtime's 28.9 dB.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgetune.ir.graph import Graph
from edgetune.ir.quant import activation_params
from edgetune.ir.torch_exec import GraphRunner, bind_inputs, fake_quant
from edgetune.progress import Progress
from edgetune.quantize.layerwise import last_use

if TYPE_CHECKING:
    from edgetune.quantize.calibrate import CalibrationRecord

SAMPLES = 64  # calibration samples the candidates are judged on (16 at a time: memory)
CHUNK = 16


def choose_by_output(graph: Graph, records: dict[str, CalibrationRecord], samples: np.ndarray, progress: Progress | None = None) -> None:
    """Set each record's method and range (in place) to the candidate with the least output error."""
    runner = GraphRunner(graph)
    judged = [name for name, record in records.items() if len(set(record.ranges.values())) > 1]
    errors = {name: dict.fromkeys(records[name].ranges, 0.0) for name in judged}
    x = np.ascontiguousarray(samples[:SAMPLES])
    chunks = range(0, len(x), CHUNK)
    done = 0
    for start in chunks:
        for _ in _add_errors(graph, runner, records, errors, torch.from_numpy(x[start : start + CHUNK])):
            done += 1
            if progress is not None:
                progress(done, len(chunks) * len(judged), "output-error ranges")
    for name, by_method in errors.items():
        record = records[name]
        record.method = min(by_method, key=lambda m: (by_method[m], m != "mse"))  # a tie keeps MSE
        record.chosen = record.ranges[record.method]


def _add_errors(
    graph: Graph, runner: GraphRunner, records: dict[str, CalibrationRecord], errors: dict[str, dict[str, float]], x: torch.Tensor
) -> Iterator[str]:
    """Add each judged tensor's output error per candidate range on the samples ``x``,
    yielding each tensor's name once it is judged."""
    last = last_use(graph)
    with torch.no_grad():
        reference = runner(x)
        live: dict[str, torch.Tensor] = bind_inputs(graph, x)
        for index in range(-1, len(graph.nodes)):  # -1: the graph's inputs, before any node
            if index >= 0:
                runner.run_node(graph.nodes[index], live)
            produced = graph.inputs if index < 0 else graph.nodes[index].outputs
            for name in (n for n in produced if n in errors):
                for method, (low, high) in records[name].ranges.items():
                    values = {**live, name: fake_quant(live[name], activation_params(low, high))}
                    for node in graph.nodes[index + 1 :]:
                        runner.run_node(node, values)
                    errors[name][method] += float(((values[graph.outputs[0]] - reference) ** 2).sum())
                yield name
            if index >= 0:
                for name in [n for n in live if last.get(n, len(graph.nodes)) <= index]:
                    del live[name]
