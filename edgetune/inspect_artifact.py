"""``edgetune inspect``: what an artifact holds: ops, parameters, MACs, size, quantization."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.errors import InputError


def inspect_path(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"artifact {path} does not exist", "check the path")
    if path.suffix == ".onnx":
        info = inspect_onnx(path)
    elif path.suffix == ".tflite":
        info = inspect_tflite(path)
    elif path.suffix == ".edgetune":
        from edgetune.ir.serialize import load_graph
        from edgetune.ir.stats import graph_summary

        info = {"format": "edgetune graph", **graph_summary(load_graph(path))}
    else:
        raise InputError(f"cannot inspect {path.suffix or 'a file without suffix'}", "give an .onnx, .tflite or .edgetune file")
    return {"artifact": str(path), "bytes": path.stat().st_size, **info}


def _shape(value_info: Any) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else 1 for d in dims]


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise InputError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0]})", "re-export it") from None
    try:
        return _walk_onnx(model, inferred.graph)
    except Exception as exc:  # the checker passes some files whose tensors contradict their shapes
        raise InputError(f"cannot read {path}: its tensors contradict their shapes ({type(exc).__name__})", "re-export it") from exc


def _walk_onnx(model: Any, graph: Any) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    shapes = {vi.name: _shape(vi) for vi in [*graph.value_info, *graph.input, *graph.output]}
    inits = {t.name: t for t in graph.initializer}
    for name, tensor in inits.items():
        shapes[name] = list(tensor.dims)
    producer = {out: node for node in graph.node for out in node.output}
    ops = Counter(node.op_type for node in graph.node)
    macs = 0
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) >= 2:
            weight = node.input[1]
            source = producer.get(weight)
            if source is not None and source.op_type == "DequantizeLinear":
                weight = source.input[0]
            w_shape = shapes.get(weight)
            out_shape = shapes.get(node.output[0])
            if not w_shape or not out_shape:
                continue
            if node.op_type == "Conv":
                macs += int(np.prod(out_shape[1:])) * int(np.prod(w_shape[1:]))
            else:
                macs += int(np.prod(out_shape[1:])) * (w_shape[1] if node.op_type == "Gemm" and _trans_b(node) else w_shape[0])
    # Parameters are weights and biases: not the scales and zero points of Q/DQ nodes, not shape constants.
    qdq_params = {name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input[1:]}
    params = sum(
        int(np.prod(t.dims))
        for name, t in inits.items()
        if name not in qdq_params and t.data_type != onnx.TensorProto.INT64 and len(t.dims) >= 1
    )
    int_weights = sum(1 for t in inits.values() if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 1)
    int4_weights = sum(1 for t in inits.values() if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) and len(t.dims) > 1)
    activation_types = sorted(
        {
            numpy_helper.to_array(inits[n.input[2]]).dtype.name
            for n in graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
        }
    )
    meta = {p.key: p.value for p in model.metadata_props}
    return {
        "format": "onnx",
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ops": dict(sorted(ops.items())),
        "nodes": len(graph.node),
        "parameters": params,
        "macs": macs,
        "input_shape": _shape(graph.input[0]) if graph.input else [],
        "output_shape": _shape(graph.output[0]) if graph.output else [],
        "quantization": {
            "qdq": ops.get("QuantizeLinear", 0) > 0,
            "int8_weight_tensors": int_weights,
            "int4_weight_tensors": int4_weights,
            "activation_types": activation_types,
        },
        "metadata": meta,
    }


def _trans_b(node: Any) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


_TFLITE_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}


def inspect_tflite(path: Path) -> dict[str, Any]:
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    blob = path.read_bytes()
    runner = TfliteRunner(blob)  # verifies the flatbuffer (model_content) before we walk it
    runner.probe(str(path))
    try:
        return _walk_tflite(blob, runner)
    except Exception as exc:  # a verified flatbuffer can still hold out-of-range indices or damaged metadata
        raise InputError(
            f"cannot read {path}: its flatbuffer is damaged ({type(exc).__name__})", "check that it is a valid .tflite file"
        ) from exc


def _walk_tflite(blob: bytes, runner: Any) -> dict[str, Any]:
    import tflite

    from edgetune.profile.agent import delegation

    model = tflite.Model.GetRootAsModel(blob, 0)
    names = {value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    ops: Counter[str] = Counter()
    versions: dict[str, int] = {}
    macs = 0
    weight_inputs: set[int] = set()
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = codes[op.OpcodeIndex()]
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ops[name] += 1
        versions[name] = code.Version()
        inputs = [op.Inputs(i) for i in range(op.InputsLength())]
        out_shape = list(tensors[op.Outputs(0)].ShapeAsNumpy())
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weight_inputs.update(i for i in inputs[1:] if i >= 0)
            weight = list(tensors[inputs[1]].ShapeAsNumpy())
            if name == "CONV_2D":
                macs += int(np.prod(out_shape[1:])) * int(np.prod(weight[1:]))
            elif name == "DEPTHWISE_CONV_2D":
                macs += int(np.prod(out_shape[1:])) * int(np.prod(weight[1:3]))
            else:
                macs += int(np.prod(out_shape[1:])) * int(weight[1])
    params = sum(int(np.prod(tensors[i].ShapeAsNumpy())) for i in weight_inputs)
    int8 = [t for t in tensors if t.Type() == tflite.TensorType.INT8]
    per_channel = sum(1 for t in tensors if t.Quantization() is not None and t.Quantization().ScaleLength() > 1)
    model_in, model_out = tensors[graph.Inputs(0)], tensors[graph.Outputs(0)]
    return {
        "format": "tflite",
        "schema_version": model.Version(),
        "runtime": runner.runtime,
        "ops": dict(sorted(ops.items())),
        "op_versions": dict(sorted(versions.items())),
        "nodes": graph.OperatorsLength(),
        "tensors": len(tensors),
        "parameters": params,
        "macs": macs,
        "input_shape": [int(d) for d in model_in.ShapeAsNumpy()],
        "output_shape": [int(d) for d in model_out.ShapeAsNumpy()],
        "input_type": _TFLITE_TYPES.get(model_in.Type(), str(model_in.Type())),
        "output_type": _TFLITE_TYPES.get(model_out.Type(), str(model_out.Type())),
        "quantization": {"int8_tensors": len(int8), "per_channel_tensors": per_channel},
        "delegation": delegation(runner.interpreter),
        "metadata": _tflite_metadata(model),
    }


def _tflite_metadata(model: Any) -> dict[str, Any]:
    """The model's metadata entries as text; edgetune's own entry as the JSON it holds."""
    import json

    metadata: dict[str, Any] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        text = bytes(data).rstrip(b"\0").decode(errors="replace") if not isinstance(data, int) else ""
        key = entry.Name().decode()
        metadata[key] = json.loads(text) if key == "edgetune" else text
    return metadata
