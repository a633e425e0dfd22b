"""Write the IR as an ONNX model: float, or int8 QDQ with the graph's quantization parameters."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

import edgetune
from edgetune.errors import UnsupportedOpsError
from edgetune.export.config import input_names
from edgetune.export.onnx.builder import OnnxBuilder
from edgetune.export.onnx.ops import ONNX_OPS
from edgetune.ir.graph import Graph

OPSET = 17
INT4_OPSET = 21  # INT4 tensors, and Q/DQ of int4 and int16, came in opset 21 (IR version 10)
OUTPUT_NAME = "output"


def build_onnx(
    graph: Graph, quantized: bool, unsigned_activations: bool = False, expose: Sequence[str] = (), int4_weights: bool = False
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ONNX model, and the ONNX value names of the IR tensors in ``expose``, which are
    added as extra graph outputs (calibration reads activations that way). ``int4_weights``
    stores 4-bit weights packed as INT4, which takes opset 21."""
    missing = ONNX_OPS.missing(node.op for node in graph.nodes)
    if missing:
        raise UnsupportedOpsError(missing, "the ONNX writer")
    # INT4 weights and int16 activations (the 16x8 fallback) take opset 21.
    wide = quantized and any(t.quant is not None and t.quant.dtype == "int16" for t in graph.tensors.values())
    opset = INT4_OPSET if int4_weights or wide else OPSET
    b = OnnxBuilder(graph, quantized, unsigned_activations, opset=opset, int4_weights=int4_weights)
    names = input_names(graph)
    b._taken.update({*names, OUTPUT_NAME})
    for graph_input, name in zip(graph.inputs, names):
        b.write(graph_input, name)
    for node in graph.nodes:
        b.write(node.outputs[0], ONNX_OPS[node.op](b, node))
    (graph_output,) = graph.outputs
    # Name the final value "output" by renaming whichever node produced it.
    final = b.read(graph_output)
    if final in names:
        b.node("Identity", [final], [OUTPUT_NAME])
    else:
        for proto in b.nodes:
            proto.output[:] = [OUTPUT_NAME if o == final else o for o in proto.output]
            proto.input[:] = [OUTPUT_NAME if i == final else i for i in proto.input]

    out_shape: list[str | int] = ["N", *graph.tensors[graph_output].shape[1:]]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)]
    exposed = {name: OUTPUT_NAME if b.names[name] == final else b.names[name] for name in expose}
    for name, value in exposed.items():
        if value not in (*names, OUTPUT_NAME):
            outputs.append(helper.make_tensor_value_info(value, input_type(graph, name), None))
    onnx_graph = helper.make_graph(
        b.nodes,
        "edgetune",
        [
            helper.make_tensor_value_info(name, input_type(graph, graph_input), ["N", *graph.tensors[graph_input].shape[1:]])
            for graph_input, name in zip(graph.inputs, names)
        ],
        outputs,
        initializer=b.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="edgetune",
        producer_version=edgetune.__version__,
    )
    # IR 8 is readable by every onnxruntime release that supports opset 17; INT4 needs IR 10.
    model.ir_version = 10 if opset >= INT4_OPSET else 8
    meta = {"edgetune.format": ("int4-weights-qdq" if int4_weights else "int8-qdq") if quantized else "fp32"}
    if quantized:
        meta["edgetune.activations"] = "uint8" if unsigned_activations else "int8"
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model, exposed


def write_onnx(graph: Graph, quantized: bool, unsigned_activations: bool = False, int4_weights: bool = False) -> bytes:
    """Serialized ONNX bytes (one file, weights inline)."""
    model, _ = build_onnx(graph, quantized, unsigned_activations, int4_weights=int4_weights)
    return bytes(model.SerializeToString())


def input_type(graph: Graph, name: str | None = None) -> int:
    """The ONNX element type of a model input (the first by default) or an activation: float,
    or int64 (token ids, a mask, and what reshapes them)."""
    return TensorProto.INT64 if graph.tensors[name or graph.inputs[0]].is_integer else TensorProto.FLOAT
