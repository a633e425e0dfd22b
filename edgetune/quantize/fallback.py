"""Mixed-precision fallback: keep the fewest layers in float, or at int16 activations, that
bring the int8 model to an accuracy target.

Layers are tried from the most sensitive (per-layer sensitivity, alone in int8) down, each
measured end to end on held-out calibration samples with ONNX Runtime, until the target is
met; then each chosen layer but the last is tried back in int8 and stays there if the
target still holds. A float layer keeps int8 tensors around it, so both artifacts make the
same choice: ONNX runs it as a float operator between DequantizeLinear and QuantizeLinear,
TFLite as DEQUANTIZE, the float operator, QUANTIZE (XNNPACK delegates all three). A tensor
between two float layers stays float, so the fallback also fixes activations that int8
cannot hold (a depthwise output whose channels differ by orders of magnitude).

The other fallback (``precision="int16"``) keeps the layers' int8 weights and gives them
int16 activations: TFLite's 16x8 kernels (int64 bias), ONNX's int16 QuantizeLinear (opset
21). A tensor between two such layers is int16 (symmetric, zero point 0, over the range the
int8 parameters covered); an int16 layer reading or writing an int8 tensor converts at the
boundary. It suits integer-only targets (microcontrollers, NPUs); on CPUs XNNPACK does not
delegate 16x8 operators and ONNX Runtime runs them in float, so there float is faster.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, QParams
from edgetune.ir.quant import bias_params, int16_params
from edgetune.progress import Progress
from edgetune.quantize.scores import float_outputs, int8_scores


@dataclass(frozen=True)
class AccuracyTarget:
    """Output SQNR against fp32 (``30dB``) or top-1 agreement with fp32 (``99%`` or ``0.99``)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> AccuracyTarget:
        cleaned = text.strip().lower().replace(" ", "")
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)(db|%)?", cleaned)
        if match is None:
            raise InputError(
                f"accuracy target {text!r} is not like 30dB or 99%", "give output SQNR in dB (30dB) or agreement (99% or 0.99)"
            )
        number, unit = float(match.group(1)), match.group(2)
        if unit == "db":
            return cls("sqnr_db", number)
        value = number / 100 if unit == "%" or number > 1 else number
        if not 0 < value <= 1:
            raise InputError(f"accuracy target {text!r} is not a share of agreement", "give a value in (0, 100]%")
        return cls("agreement", value)

    def met(self, scores: dict[str, float]) -> bool:
        return scores[self.metric] >= self.value

    def __str__(self) -> str:
        return f"{self.value:g} dB output SQNR" if self.metric == "sqnr_db" else f"{100 * self.value:g}% top-1 agreement"


PRECISIONS = ("float", "int16")


class Precision:
    """Switches weighted layers between int8 and a wider precision on a calibrated graph.

    A float layer has float weights and bias; an int16 layer keeps its int8 weights and gets
    an int64 bias on the grid of its input's scale. A tensor between two such layers (its
    producer and every consumer switched) becomes float or int16 too, so that what a wider
    type fixes in activations is fixed; every other tensor keeps its int8 parameters. In
    float, other ops fed only by switched ones (adds, pools) run in float as well.
    """

    def __init__(self, graph: Graph, precision: str = "float") -> None:
        if precision not in PRECISIONS:
            raise InputError(f"fallback precision {precision!r} is unknown", f"use one of {', '.join(PRECISIONS)}")
        self.graph = graph
        self.precision = precision
        self.saved = {name: (t.quant, t.qdata) for name, t in graph.tensors.items()}
        self.consumers = graph.consumers()
        self.producers = graph.producers()
        self.weighted = {n.name: n for n in graph.nodes if n.op in WEIGHTED_OPS}
        # layers that read one weight (the steps of an unrolled GRU) switch together
        self.tied: dict[str, set[str]] = {}
        for node in self.weighted.values():
            self.tied.setdefault(node.inputs[1], set()).add(node.name)

    def region(self, layers: set[str]) -> set[str]:
        """The switched layers and, in float, every other op all of whose inputs they (or such
        ops) produce: an add or a pool between float layers runs in float, so the tensors
        around it can stay float too; and a transformer's quantization point whose readers are
        all float layers, which then read its float values."""
        switched = set(layers)
        for name in layers:
            if name in self.weighted:
                switched |= self.tied[self.weighted[name].inputs[1]]
        if self.precision != "float":
            return switched
        for node in self.graph.nodes:  # a transformer's quantization point that only float layers read (quantize/stream.py)
            readers = self.consumers.get(node.outputs[0], [])
            if node.op == "channels" and node.attrs["side"] == "input" and readers and all(r.name in switched for r in readers):
                switched.add(node.name)
        for node in self.graph.nodes:
            sources = [self.producers.get(name) for name in node.inputs if name and self.graph.tensors[name].data is None]
            if node.op not in WEIGHTED_OPS and sources and all(p is not None and p.name in switched for p in sources):
                switched.add(node.name)
        return switched

    def set(self, layers: set[str]) -> None:
        graph = self.graph
        layers = self.region(layers)
        for name in graph.activations():
            producer = self.producers.get(name)
            users = self.consumers.get(name, [])
            internal = producer is not None and producer.name in layers and users and all(u.name in layers for u in users)
            saved = self.saved[name][0]
            if not internal or name in graph.outputs or saved is None:
                graph.tensors[name].quant = saved
            else:
                graph.tensors[name].quant = None if self.precision == "float" else int16_params(saved)
        for name, node in self.weighted.items():
            chosen = name in layers
            for constant in (n for n in node.inputs[1:] if n):
                tensor = graph.tensors[constant]
                tensor.quant, tensor.qdata = (None, None) if chosen and self.precision == "float" else self.saved[constant]
            if chosen:
                node.attrs["precision"] = self.precision
                if self.precision == "int16":
                    self._wide_bias(node)
            else:
                node.attrs.pop("precision", None)
        for node in graph.nodes:  # ops other than layers that run in float, with float operands
            if node.op in WEIGHTED_OPS or node.op == "channels" or node.attrs.get("stream"):
                continue  # the float stream's own (quantize/stream.py) keep their precision
            for constant in (n for n in node.inputs if n and graph.tensors[n].data is not None):
                graph.tensors[constant].quant = None if node.name in layers else self.saved[constant][0]
            if node.name in layers:
                node.attrs["precision"] = "float"
            else:
                node.attrs.pop("precision", None)

    def _wide_bias(self, node: Node) -> None:
        """An int16 layer's bias: int64 levels on the grid of its (int16 or int8) input's scale."""
        if len(node.inputs) < 3 or not node.inputs[2]:
            return
        input_q, weight_q = self.graph.tensors[node.inputs[0]].quant, self.graph.tensors[node.inputs[1]].quant
        assert input_q is not None and weight_q is not None
        bias = bias_params(input_q, weight_q)
        self.graph.tensors[node.inputs[2]].quant = QParams(bias.scale, bias.zero_point, "int64", bias.axis)


def _search(
    switch: Precision,
    order: list[str],
    target: AccuracyTarget,
    score: Callable[[], dict[str, float]],
    before: dict[str, float],
    progress: Progress | None,
) -> tuple[list[str], dict[str, float]]:
    """Layers switched one at a time in ``order`` until ``target`` holds, then each but the last
    tried back in int8; none when the target stays out of reach. Leaves ``switch`` set to the answer."""
    chosen: list[str] = []
    current = before
    for done, name in enumerate(order, 1):
        if target.met(current):
            break
        chosen.append(name)
        switch.set(set(chosen))
        current = score()
        if progress is not None:
            progress(done, len(order), "fallback search")
    if not target.met(current):
        switch.set(set())
        return [], before
    for name in reversed(chosen[:-1]):  # the last one added was needed
        switch.set(set(chosen) - {name})
        trial = score()
        if target.met(trial):
            chosen.remove(name)
            current = trial
    switch.set(set(chosen))
    return chosen, current


def choose_fallback(
    graph: Graph,
    x: np.ndarray,
    target: AccuracyTarget,
    sensitivity: list[dict[str, Any]],
    progress: Progress | None = None,
    precision: str = "float",
) -> dict[str, Any]:
    """Switch layers to ``precision`` (in place) until ``target`` holds on ``x``; returns the report block."""
    reference = float_outputs(graph, x)
    before = int8_scores(graph, x, reference)
    if target.metric not in before:
        raise InputError("an agreement target needs a classifier's output (N x classes)", "give the target as output SQNR, e.g. 30dB")
    switch = Precision(graph, precision)
    order = [row["layer"] for row in sorted(sensitivity, key=lambda row: row["sqnr_db"])]
    bound = None
    if not target.met(before):  # the bound first: with every layer switched, can the target be met at all?
        switch.set(set(order))
        bound = int8_scores(graph, x, reference)
        if not target.met(bound):
            order = []  # no: skip the search
    chosen, current = _search(switch, order, target, lambda: int8_scores(graph, x, reference), before, progress)
    why = None
    if not target.met(current) and precision == "int16" and bound == before and graph.meta.get("stream"):
        why = (
            "not reachable in int16: in a transformer's float stream every int8 layer reads and writes float tensors through"
            " its own quantization points, so no tensor lies between two 16x8 layers; use --fallback float"
        )
    elif not target.met(current):  # activations left in int8 keep it out of reach
        why = f"not reachable: even with every layer tried in {precision} the target is missed, so none is switched" + (
            "; tensors read by adds, pools or the output stay int8"
            + ("; 16x8 layers keep their int8 weights, so --fallback float may get further" if precision == "int16" else "")
        )
    nodes = {node.name: node for node in graph.nodes}
    block = {
        "target": str(target),
        "metric": target.metric,
        "reached": target.met(current),
        "before": before,
        "after": current,
        "precision": precision,
        f"{precision}_layers": chosen,
        "samples": len(x),
        "note": "measured with ONNX Runtime on held-out calibration samples; layers tried from the most sensitive",
    }
    if precision == "float":
        block["float_weight_bytes"] = int(sum(4 * graph.const(nodes[n].inputs[1]).size for n in chosen))
        block["float_ops"] = sorted(n.name for n in graph.nodes if n.in_float and n.op not in WEIGHTED_OPS)
    if bound is not None:  # how far switching can go at all: int16 layers keep int8 weights, tensors at adds stay int8
        block["every_layer_switched"] = bound
    if why:
        block["why"] = why
    return block
