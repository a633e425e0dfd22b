"""Ops the int8 artifacts compute in float by design, and why: the report lists them."""

from __future__ import annotations

from typing import Any

from edgetune.ir.graph import Graph

# op -> (which files, why)
FLOAT_BY_DESIGN = {
    "layer_norm": (
        "both",
        "TFLite has no LayerNorm operator and requantizing each of its steps loses the most accuracy of any transformer op:"
        " it runs in float between the int8 input and output",
    ),
    "group_norm": ("both", "no GroupNorm or InstanceNorm operator with int8 kernels: float between the int8 input and output"),
    "gelu": ("ONNX", "opset 17 has no Gelu: float between DequantizeLinear and QuantizeLinear (TFLite's int8 GELU is a table of it)"),
    "prelu": ("ONNX", "ONNX Runtime has no integer PRelu: float between DequantizeLinear and QuantizeLinear"),
    **{op: ("both", "no int8 kernel in either runtime: float between the int8 input and output") for op in ("elu", "softplus", "mish")},
    "clamp": ("TFLite", "MAXIMUM and MINIMUM with its bounds, in float between the int8 input and output"),
}


STREAM_WHY = (
    "the float stream of a transformer (quantize/stream.py): its outputs stay float, and int8 layers read them through a quantization point"
)


def float_ops(graph: Graph) -> list[dict[str, Any]]:
    """Per op the int8 files compute in float: the layers, which files, and why."""
    found = []
    stream = [node for node in graph.nodes if node.attrs.get("stream") and node.op != "channels"]
    by_op: dict[str, list[str]] = {}
    for node in stream:
        by_op.setdefault(node.op, []).append(node.name)
    found += [{"op": op, "layers": layers, "files": "both", "why": STREAM_WHY} for op, layers in by_op.items()]
    for op, (where, why) in FLOAT_BY_DESIGN.items():
        layers = [node.name for node in graph.nodes if node.op == op and op not in by_op]
        if layers:
            found.append({"op": op, "layers": layers, "files": where, "why": why})
    return found
