"""An artifact as a list of ops with the figures the estimators need: MACs, bytes read and
written, whether the arithmetic is int8, and, for TFLite, each tensor's lifetime.

Read straight from the files (the ``tflite`` flatbuffer bindings; ONNX shape inference), with
no runtime, so that it works for boards whose runtime this host does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetune.errors import InputError

_TFLITE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}  # TensorType -> bytes per element
MAC_OPS = {"CONV_2D": "dense", "FULLY_CONNECTED": "dense", "DEPTHWISE_CONV_2D": "depthwise"}


@dataclass
class OpCost:
    name: str
    op: str
    kind: str  # dense, depthwise or other (no MACs)
    macs: int
    bytes_in: int  # activations and weights read
    bytes_out: int
    int8: bool


@dataclass
class TensorLife:
    name: str
    bytes: int
    first: int  # index of the op that writes it (-1: a graph input)
    last: int  # index of the last op that reads it (the op count: a graph output)


@dataclass
class OpList:
    format: str
    ops: list[OpCost]
    tensors: list[TensorLife] = field(default_factory=list)  # activations only (TFLite)
    weights_bytes: int = 0

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)


def read_ops(path: Path) -> OpList:
    if path.suffix == ".tflite":
        return tflite_ops(path.read_bytes())
    if path.suffix == ".onnx":
        return onnx_ops(path)
    raise InputError(f"cannot read ops from {path.suffix or 'a file without suffix'}", "give an .onnx or .tflite file")


def tflite_ops(blob: bytes) -> OpList:
    import tflite

    if len(blob) < 8 or blob[4:8] != b"TFL3":
        raise InputError("not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file")
    model = tflite.Model.GetRootAsModel(blob, 0)
    names = {value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]

    def size(index: int) -> int:
        tensor = tensors[index]
        return (
            int(np.prod(tensor.ShapeAsNumpy())) * _TFLITE_BYTES.get(tensor.Type(), 4)
            if tensor.ShapeLength()
            else _TFLITE_BYTES.get(tensor.Type(), 4)
        )

    def constant(index: int) -> bool:
        buffer = model.Buffers(tensors[index].Buffer())
        return buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)

    ops, first, last = [], {}, {}
    for i in graph_inputs(graph):
        first[i] = -1
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = codes[op.OpcodeIndex()]
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        inputs = [i for i in (op.Inputs(k) for k in range(op.InputsLength())) if i >= 0]
        outputs = [op.Outputs(k) for k in range(op.OutputsLength())]
        for i in inputs:
            if not constant(i):
                last[i] = index
        for o in outputs:
            first.setdefault(o, index)
        out_shape = [int(d) for d in tensors[outputs[0]].ShapeAsNumpy()]
        macs = _tflite_macs(name, out_shape, [int(d) for d in tensors[inputs[1]].ShapeAsNumpy()] if len(inputs) > 1 else [])
        int8 = tensors[outputs[0]].Type() in (tflite.TensorType.INT8, tflite.TensorType.UINT8)
        out_name = tensors[outputs[0]].Name().decode()
        ops.append(
            OpCost(out_name, name, MAC_OPS.get(name, "other"), macs, sum(size(i) for i in inputs), sum(size(o) for o in outputs), int8)
        )
    for o in (graph.Outputs(k) for k in range(graph.OutputsLength())):
        last[o] = len(ops)
    lives = [TensorLife(tensors[t].Name().decode(), size(t), start, last.get(t, start)) for t, start in first.items() if not constant(t)]
    weights = sum(size(i) for i in range(len(tensors)) if constant(i))
    return OpList("tflite", ops, lives, weights)


def graph_inputs(graph: object) -> list[int]:
    return [graph.Inputs(k) for k in range(graph.InputsLength())]  # type: ignore[attr-defined]


def _tflite_macs(name: str, out_shape: list[int], weight: list[int]) -> int:
    if name == "CONV_2D" and len(weight) == 4:  # weight OHWI, output NHWC
        return math.prod(out_shape[1:]) * math.prod(weight[1:])
    if name == "DEPTHWISE_CONV_2D" and len(weight) == 4:  # weight 1HWO
        return math.prod(out_shape[1:]) * weight[1] * weight[2]
    if name == "FULLY_CONNECTED" and len(weight) == 2:
        return math.prod(out_shape[1:]) * weight[1]
    return 0


_ONNX_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 10: 2, 11: 8}  # TensorProto type -> bytes


def onnx_ops(path: Path) -> OpList:
    """Ops of an ONNX model as ONNX Runtime will run them: Q/DQ pairs around a Conv or Gemm
    count as one int8 op (ORT fuses them), standalone Q/DQ as their own."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:
        raise InputError(f"cannot read {path} ({str(exc).splitlines()[0]})", "pass a valid ONNX model") from None
    graph = model.graph
    info = {vi.name: vi for vi in [*graph.value_info, *graph.input, *graph.output]}
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def shape(name: str) -> list[int]:
        if name in inits:
            return list(inits[name].dims)
        vi = info.get(name)
        if vi is None:
            return []
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]

    def nbytes(name: str) -> int:
        kind = inits[name].data_type if name in inits else info[name].type.tensor_type.elem_type if name in info else 1
        return math.prod(shape(name)) * _ONNX_BYTES.get(kind, 4)

    def through_dq(name: str) -> str:
        node = producer.get(name)
        return node.input[0] if node is not None and node.op_type == "DequantizeLinear" else name

    edges = {i.name for i in graph.input} | {o.name for o in graph.output}
    ops = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not edges & {*node.input, *node.output}:
            continue  # ORT folds it into the integer kernel next to it
        inputs = [through_dq(i) for i in node.input if i]
        int8 = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input if i)
        macs, kind = _onnx_macs(node, shape(node.output[0]), shape(inputs[1]) if len(inputs) > 1 else [])
        out_bytes = math.prod(shape(node.output[0])) * (1 if int8 else 4)
        ops.append(OpCost(node.output[0], node.op_type, kind, macs, sum(nbytes(i) for i in inputs), out_bytes, int8))
    weights = sum(nbytes(name) for name in inits)
    return OpList("onnx", ops, [], weights)


def _onnx_macs(node: object, out_shape: list[int], weight: list[int]) -> tuple[int, str]:
    op = node.op_type  # type: ignore[attr-defined]
    if op == "Conv" and len(weight) == 4:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)  # type: ignore[attr-defined]
        macs = math.prod(out_shape[1:]) * math.prod(weight[1:])
        return macs, "depthwise" if group > 1 and weight[1] == 1 else "dense"
    if op in ("Gemm", "MatMul") and len(weight) == 2:
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)  # type: ignore[attr-defined]
        return math.prod(out_shape[1:]) * (weight[1] if transposed else weight[0]), "dense"
    return 0, "other"
