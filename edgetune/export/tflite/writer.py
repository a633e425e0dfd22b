"""Write the IR as a TFLite flatbuffer: full-integer int8, or float."""

from __future__ import annotations

import json
from typing import Any

import tflite

import edgetune
from edgetune.errors import UnsupportedOpsError
from edgetune.export.config import input_names
from edgetune.export.tflite import deconv, float_activations, gather, matmul, norms, rearrange  # noqa: F401  (register their ops)
from edgetune.export.tflite.builder import TflBuilder, quant_spec
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import TFLITE_OPS, unsupported
from edgetune.export.tflite.validate import check_quantization, check_requantization
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node

OUTPUT_NAME = "output"


def write_tflite(
    graph: Graph, quantized: bool = True, int8_io: bool = False, metadata: dict[str, Any] | None = None, weights: str = "float32"
) -> bytes:
    """TFLite bytes for ``graph``.

    ``quantized``: full-integer int8 from the graph's parameters (else float).
    ``weights`` (a float model's): ``float32``, ``float16`` or ``dynamic-int8`` (see modes.py).
    ``int8_io``: int8 model input and output (MCU style) instead of float ones wrapped in
    QUANTIZE/DEQUANTIZE (CPU style). Tensors are NHWC: the model's input is the NCHW input
    transposed.
    """
    problems = [reason for node in graph.nodes if (reason := unsupported(graph, node))]
    if problems:
        raise UnsupportedOpsError(problems, "the TFLite writer")
    if quantized:
        check_quantization(graph)
        check_requantization(graph)
    b = TflBuilder(graph, quantized)
    (graph_output,) = graph.outputs
    wrap = quantized and not int8_io
    model_inputs = []
    for graph_input, name in zip(graph.inputs, input_names(graph)):
        if wrap and not graph.tensors[graph_input].is_integer:  # token ids go in as they are
            model_input = b.model.add_tensor(TflTensor(name, b.shape(graph_input), tflite.TensorType.FLOAT32))
            b.op(tflite.BuiltinOperator.QUANTIZE, [model_input], [b.define(graph_input)])
        else:
            model_input = b.define(graph_input)
            b.model.tensors[model_input].name = name
        model_inputs.append(model_input)
    for node in graph.nodes:
        if quantized and node.in_float and node.op not in WEIGHTED_OPS:
            _in_float(b, node)
        else:
            TFLITE_OPS[node.op](b, node)
    last = b.index[graph_output]
    if wrap and b.model.tensors[last].dtype == tflite.TensorType.FLOAT32:  # a float op wrote it (quantize/stream.py)
        wrap = False
    if wrap:
        model_output = b.model.add_tensor(TflTensor(OUTPUT_NAME, b.shape(graph_output), tflite.TensorType.FLOAT32))
        b.op(tflite.BuiltinOperator.DEQUANTIZE, [last], [model_output])
    else:
        model_output = last
        if model_output in model_inputs:
            raise UnsupportedOpsError(["a graph without operators"], "the TFLite writer")
        b.model.tensors[model_output].name = OUTPUT_NAME
    for index in (*model_inputs, model_output):  # a dynamic batch axis, as converters mark it
        tensor = b.model.tensors[index]
        tensor.shape_signature = [-1, *tensor.shape[1:]]
    b.model.inputs, b.model.outputs = model_inputs, [model_output]
    if not quantized and weights != "float32":
        _store_weights(b, weights)
    # padded to 16 bytes, as the converter pads it
    b.model.metadata = {
        "min_runtime_version": b.min_runtime.encode().ljust(16, b"\0"),
        "edgetune": json.dumps(_metadata(graph, quantized, int8_io, metadata, weights), sort_keys=True).encode(),
    }
    b.model.description = f"edgetune {edgetune.__version__}"
    return b.model.serialize()


def _store_weights(b: TflBuilder, weights: str) -> None:
    """A float model's layer weights as float16 or int8 (modes.py)."""
    from edgetune.export.tflite import modes

    if weights == "float16":
        modes.float16_weights(b.model)
    else:
        modes.dynamic_int8(b.model, b.graph.meta.get("per_channel", True))


def _metadata(graph: Graph, quantized: bool, int8_io: bool, extra: dict[str, Any] | None, weights: str) -> dict[str, Any]:
    """The ``edgetune`` metadata entry: producer, layout, scheme and I/O quantization, and the caller's."""
    info: dict[str, Any] = {
        "producer": f"edgetune {edgetune.__version__}",
        "layout": "NHWC",
        "quantization": _scheme(graph) if quantized else {"float32": "float32", "float16": "float16 weights"}.get(weights, weights),
        "io": "int8" if quantized and int8_io else "float32",
    }
    model_input = graph.tensors[graph.inputs[0]]
    if model_input.is_integer:
        info["input"] = "int32 token ids"
    if len(graph.inputs) > 1:
        info["inputs"] = input_names(graph)
    if quantized and int8_io:
        if model_input.quant is not None:
            info["input_quantization"] = quant_spec(model_input.quant).__dict__
        output_quant = graph.tensors[graph.outputs[0]].quant
        if output_quant is not None:
            info["output_quantization"] = quant_spec(output_quant).__dict__
    info.update(extra or {})
    return info


def _scheme(graph: Graph) -> str:
    text = "int8 full-integer (TFLite int8 spec), weights per-channel"
    wide = [node.name for node in graph.nodes if node.attrs.get("precision") == "int16"]
    floating = [node.name for node in graph.nodes if node.in_float]
    if wide:
        text += f"; {len(wide)} layer(s) with int16 activations (16x8, int64 bias)"
    if floating:
        text += f"; {len(floating)} layer(s) in float"
    return text


def _in_float(b: TflBuilder, node: Node) -> None:
    """An op the float fallback runs in float inside the int8 model (an add or a pool between
    float layers): its int8 inputs are dequantized, it is written as in a float model, and an
    int8 output is quantized back."""
    restore = {}
    for name in node.inputs:
        index = b.index.get(name)
        if index is None or b.model.tensors[index].dtype not in (tflite.TensorType.INT8, tflite.TensorType.INT16):
            continue  # float already, or integer values (ids, a mask)
        view = f"{name}@float"
        if view not in b.index:
            b.index[view] = b.model.add_tensor(TflTensor(f"{name}_float", b.model.tensors[index].shape, tflite.TensorType.FLOAT32))
            b.op(tflite.BuiltinOperator.DEQUANTIZE, [index], [b.index[view]])
        restore[name] = index
        b.index[name] = b.index[view]
    b.quantized = False
    try:
        TFLITE_OPS[node.op](b, node)
    finally:
        b.quantized = True
        b.index.update(restore)
    out = node.outputs[0]
    if b.graph.tensors[out].quant is not None:  # read by an int8 op: quantize the float result
        floating = b.index[out]
        if floating not in (b.index.get(name) for name in node.inputs):  # an identity writes none of its own
            b.model.tensors[floating].name = f"{out}_float"
        b.op(tflite.BuiltinOperator.QUANTIZE, [floating], [b.define(out)])
