"""The float ONNX model rewritten for the modes without calibration:

- ``float16``: every weight and bias stored as float16, each read through a ``Cast`` to float
  (half the file; ONNX Runtime folds the casts when it loads the model and computes in float);
- ``dynamic-int8``: each ``Conv`` (but grouped ones, as the TFLite file keeps its depthwise
  layers float) and ``Gemm`` with constant weights becomes the dynamic
  quantization that ONNX Runtime's ``quantize_dynamic`` writes: ``DynamicQuantizeLinear`` turns
  the input into uint8 with a scale and zero point computed per inference, ``ConvInteger`` or
  ``MatMulInteger`` multiplies it with int8 weights (symmetric, zero point 0, a scale per output
  channel of a convolution or one per layer; one per linear layer, as TFLite's hybrid
  FULLY_CONNECTED on boards reads it), and the int32 result is scaled back to float, the bias added.
  Activations stay float between layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.ir.quant import weight_params


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {tensor.name: tensor for tensor in model.graph.initializer}


def float16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and biases of ``Conv`` and ``Gemm`` as float16 behind a ``Cast``."""
    model = _copy(model)
    constants = _initializers(model)
    casts = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        for position, name in enumerate(node.input[1:], start=1):
            tensor = constants.get(name)
            if tensor is None or tensor.data_type != TensorProto.FLOAT:
                continue
            half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{name}_float16")
            model.graph.initializer.remove(tensor)
            model.graph.initializer.append(half)
            del constants[name]
            casts.append(helper.make_node("Cast", [half.name], [name], name=f"{name}_to_float", to=TensorProto.FLOAT))
            node.input[position] = name
    nodes = [*casts, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _mark(model, "float16-weights")
    return model


def dynamic_int8(model: onnx.ModelProto, per_channel: bool = True) -> onnx.ModelProto:
    """Each ``Conv`` and ``Gemm`` (transB=1) with constant weights, dynamically quantized."""
    model = _copy(model)
    constants = _initializers(model)
    rewritten: list[onnx.NodeProto] = []
    for node in model.graph.node:
        weight = constants.get(node.input[1]) if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 else None
        grouped = node.op_type == "Conv" and _attrs(node).get("group", 1) != 1
        if weight is None or grouped or (node.op_type == "Gemm" and not _plain_gemm(node)):
            rewritten.append(node)
            continue
        rewritten += _dynamic_layer(model, node, numpy_helper.to_array(weight), constants, per_channel)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    used = {name for node in model.graph.node for name in node.input}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)
    _mark(model, "dynamic-int8")
    return model


def _plain_gemm(node: onnx.NodeProto) -> bool:
    attrs = _attrs(node)
    return attrs.get("transB", 0) == 1 and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def _dynamic_layer(
    model: onnx.ModelProto, node: onnx.NodeProto, weight: np.ndarray, constants: dict[str, onnx.TensorProto], per_channel: bool
) -> list[onnx.NodeProto]:
    """DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast -> Mul(scales) [-> Add(bias)]."""
    name = node.name or node.output[0]
    params = weight_params(weight, per_channel and node.op_type == "Conv")  # linear layers: one scale, as in the TFLite file
    scale = np.broadcast_to(params.scale, (weight.shape[0],)).astype(np.float32)
    q = np.clip(np.round(weight / scale.reshape((-1,) + (1,) * (weight.ndim - 1))), -127, 127).astype(np.int8)
    conv = node.op_type == "Conv"
    shape = (-1, 1, 1) if conv else (-1,)
    quantized = numpy_helper.from_array(q if conv else np.ascontiguousarray(q.T), f"{name}_weight_int8")
    scales = numpy_helper.from_array(scale.reshape(shape), f"{name}_weight_scale")
    model.graph.initializer.extend([quantized, scales])
    x, xs, xz = (f"{name}_{part}" for part in ("input_uint8", "input_scale", "input_zero_point"))
    nodes = [helper.make_node("DynamicQuantizeLinear", [node.input[0]], [x, xs, xz], name=f"{name}_quantize_input")]
    if conv:
        nodes.append(helper.make_node("ConvInteger", [x, quantized.name, xz], [f"{name}_int32"], name=f"{name}_conv", **_attrs(node)))
    else:
        nodes.append(helper.make_node("MatMulInteger", [x, quantized.name, xz], [f"{name}_int32"], name=f"{name}_matmul"))
    nodes.append(helper.make_node("Cast", [f"{name}_int32"], [f"{name}_int32_float"], name=f"{name}_cast", to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Mul", [xs, scales.name], [f"{name}_scale"], name=f"{name}_scale"))
    bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    scaled = node.output[0] if bias is None else f"{name}_scaled"
    nodes.append(helper.make_node("Mul", [f"{name}_int32_float", f"{name}_scale"], [scaled], name=f"{name}_rescale"))
    if bias is not None:
        folded = numpy_helper.from_array(numpy_helper.to_array(bias).astype(np.float32).reshape(shape), f"{name}_bias")
        model.graph.initializer.append(folded)
        nodes.append(helper.make_node("Add", [scaled, folded.name], [node.output[0]], name=f"{name}_bias"))
    return nodes


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _mark(model: onnx.ModelProto, mode: str) -> None:
    for entry in model.metadata_props:
        if entry.key == "edgetune.format":
            entry.value = mode
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgetune.format", mode
