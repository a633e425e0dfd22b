"""Counts over an IR graph: multiply-accumulates and parameters per layer."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from edgetune.ir.graph import Graph, Node


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of one sample through ``node`` (convolutions and linear layers)."""
    if node.op == "conv2d":
        out_elems = int(np.prod(graph.tensors[node.outputs[0]].shape[1:]))
        weight = graph.tensors[node.inputs[1]].shape  # O, I/groups, kh, kw
        return out_elems * int(np.prod(weight[1:]))
    if node.op == "conv_transpose2d":  # each input position meets every weight once
        in_positions = int(np.prod(graph.tensors[node.inputs[0]].shape[2:]))
        return in_positions * int(np.prod(graph.tensors[node.inputs[1]].shape))
    if node.op == "linear":
        out_features, in_features = graph.tensors[node.inputs[1]].shape
        rows = int(np.prod(graph.tensors[node.outputs[0]].shape[1:-1]))
        return max(rows, 1) * out_features * in_features
    return 0


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates of one sample through the whole graph."""
    return sum(node_macs(graph, node) for node in graph.nodes)


def graph_summary(graph: Graph) -> dict[str, Any]:
    quantized = [t for t in graph.tensors.values() if t.quant is not None]
    per_channel = sum(1 for t in quantized if t.quant is not None and t.quant.dtype == "int8" and t.quant.axis is not None)
    return {
        "ops": dict(sorted(Counter(node.op for node in graph.nodes).items())),
        "nodes": len(graph.nodes),
        "parameters": graph.parameter_count(),
        "macs": graph_macs(graph),
        "input_shape": list(graph.tensors[graph.inputs[0]].shape),
        "output_shape": list(graph.tensors[graph.outputs[0]].shape),
        "quantized_tensors": len(quantized),
        "per_channel_tensors": per_channel,
    }
