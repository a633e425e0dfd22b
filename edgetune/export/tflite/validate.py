"""Checks of quantization parameters that TFLite's kernels rely on, run before writing.

Interpreters abort the whole process (SIGABRT) on some violations, for example an int8
ADD whose output has no quantization, so the writer refuses such a graph with one error
that lists every problem.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgetune.errors import EdgetuneError, InputError
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node
from edgetune.ir.quant import FIXED_OUTPUT_PARAMS

# TFLite's int8 kernels require these output parameters (scale, zero point).
FIXED_OUTPUTS = FIXED_OUTPUT_PARAMS
# XNNPACK's int8 convolution and fully-connected operators accept a requantization scale
# (input scale x weight scale / output scale) in [2^-32, 256); outside it, the interpreter
# aborts the process while preparing the model.
REQUANTIZATION_RANGE = (2.0**-32, 256.0)
# Ops whose int8 input and output must share scale and zero point.
# (AVERAGE_POOL_2D and MAX_POOL_2D do not rescale: different parameters give wrong values.)
SAME_PARAMS = {"reshape", "maxpool2d", "avgpool2d", "pad", "transpose", "concat", "resize", "slice", "depth_to_space"}


def _between(graph: Graph, switched: Callable[[Node], bool]) -> set[str]:
    """Tensors whose producer and consumers are all ``switched`` layers."""
    consumers = graph.consumers()
    return {
        node.outputs[0]
        for node in graph.nodes
        if switched(node) and consumers.get(node.outputs[0]) and all(switched(u) for u in consumers[node.outputs[0]])
    }


def _between_float_layers(graph: Graph) -> set[str]:
    """Tensors whose producer and consumers are all layers kept in float: they stay float."""
    return _between(graph, lambda node: node.in_float)


def _layer_problems(graph: Graph, node: Node) -> list[str]:
    """An int8 conv or linear layer: int8 weights with zero point 0, an int32 bias to match."""
    problems = []
    weight = graph.tensors[node.inputs[1]]
    wq = weight.quant
    if wq is None or wq.dtype != "int8" or np.any(wq.zero_point != 0):
        problems.append(f"{node.op} {node.name} weights must be int8 with zero point 0")
    elif wq.axis is not None and (wq.axis != 0 or wq.scale.size != weight.shape[0]):
        problems.append(f"{node.op} {node.name} has {wq.scale.size} weight scales for {weight.shape[0]} output channels")
    if len(node.inputs) > 2:
        bq = graph.tensors[node.inputs[2]].quant
        wide = node.attrs.get("precision") == "int16"  # 16x8 kernels take an int64 bias
        bias_type = "int64" if wide else "int32"
        if bq is None or bq.dtype != bias_type or np.any(bq.zero_point != 0):
            problems.append(f"{node.op} {node.name} bias must be {bias_type} with zero point 0")
        elif wq is not None and bq.scale.size != wq.scale.size:
            problems.append(f"{node.op} {node.name} has {bq.scale.size} bias scales for {wq.scale.size} weight scales")
    return problems


def quantization_problems(graph: Graph) -> list[str]:
    problems: list[str] = []
    between_float = _between_float_layers(graph)
    between_int16 = _between(graph, lambda node: node.attrs.get("precision") == "int16")
    stream = {node.outputs[0] for node in graph.nodes if node.attrs.get("stream")}  # the float stream (quantize/stream.py)
    for name in graph.activations():
        q = graph.tensors[name].quant
        if q is None and (name in between_float or name in stream or graph.tensors[name].is_integer):  # integer ids are never quantized
            continue
        if q is not None and q.dtype == "int16" and q.axis is None:
            if name not in between_int16 or np.any(q.zero_point != 0):
                problems.append(f"activation {name} is int16 but not a symmetric tensor between two 16x8 layers")
            continue
        if q is None or q.dtype != "int8" or q.axis is not None:
            problems.append(f"activation {name} lacks per-tensor int8 parameters")
    for node in graph.nodes:
        out_q = graph.tensors[node.outputs[0]].quant
        if node.in_float:  # runs in float (the fallback): the int8 rules do not apply
            continue
        if node.op in FIXED_OUTPUTS and out_q is not None:
            scale, zero_point = FIXED_OUTPUTS[node.op]
            if not (np.isclose(out_q.scale[0], scale) and int(out_q.zero_point[0]) == zero_point):
                problems.append(f"{node.op} {node.name} output must have scale {scale:g} and zero point {zero_point}")
        if node.op in SAME_PARAMS:
            for name in node.inputs:
                tensor = graph.tensors[name]
                if tensor.data is None and not tensor.is_integer and not (out_q is not None and out_q.same_as(tensor.quant)):
                    problems.append(f"{node.op} {node.name} needs its input {name} and output to share quantization parameters")
        if node.op in WEIGHTED_OPS:
            problems += _layer_problems(graph, node)
    return problems


def check_quantization(graph: Graph) -> None:
    problems = quantization_problems(graph)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise EdgetuneError(
            f"the quantized graph breaks TFLite's int8 rules: {shown}", "recalibrate with edgetune compress, or report this as a bug"
        )


def check_requantization(graph: Graph) -> None:
    """Every int8 layer's requantization scales inside the range the TFLite kernels accept.

    They leave it when a layer's weights or outputs are wildly out of proportion (one channel
    with weights near 1e37, say): the output scale then dwarfs every other channel's. That is a
    property of the model given, so it is refused as input, naming the layers."""
    low, high = REQUANTIZATION_RANGE
    bad = []
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS or node.in_float:
            continue
        in_q, w_q, out_q = (graph.tensors[name].quant for name in (node.inputs[0], node.inputs[1], node.outputs[0]))
        if in_q is None or w_q is None or out_q is None or in_q.dtype != "int8" or out_q.dtype != "int8":
            continue
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ratio = np.float64(in_q.scale[0]) * w_q.scale.astype(np.float64) / np.float64(out_q.scale[0])
        outside = ~np.isfinite(ratio) | (ratio < low) | (ratio >= high)
        if outside.any():
            weights = graph.tensors[node.inputs[1]].data
            largest = float(np.abs(weights).max()) if weights is not None and weights.size else float("nan")
            bad.append(f"{node.name} ({int(outside.sum())} of {ratio.size} channels; largest weight {largest:.3g})")
    if bad:
        raise InputError(
            f"int8 cannot represent these layers, whose weight and output scales are out of all proportion: {', '.join(bad[:5])}",
            "check the weights for corrupt or exploding values, or keep those layers in float with --accuracy-target",
        )
