"""GATHER: rows of a constant table at integer ids (an embedding lookup). The ids are the
model's int32 input; int8, the table and the output share the table's parameters (TFLite's
kernel copies values)."""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import Op, Options, tfl_op
from edgetune.ir.channels import appended
from edgetune.ir.graph import Node

FLOAT32 = tflite.TensorType.FLOAT32


@tfl_op("gather")
def gather(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.GatherOptionsStart(fb)
        tflite.GatherOptionsAddAxis(fb, 0)
        return int(tflite.GatherOptionsEnd(fb))

    table, ids = b.read(node.inputs[1], nhwc=False), b.read(node.inputs[0])
    b.op(Op.GATHER, [table, ids], [b.define(node.outputs[0])], Options.GatherOptions, options)


@tfl_op("channels")
def channels(b: TflBuilder, node: Node) -> None:
    """Channels of the last axis scaled (MUL) and gathered (GATHER, or for the usual form a
    GATHER of the copies and a CONCATENATION: ir/channels.py), in float: the outlier split of
    quantize/stream.py. The writer runs it as a float op, so an int8 input arrives dequantized
    and an int8 output is quantized after it; an identity writes no operator."""
    x = b.read(node.inputs[0])
    indices, factors = node.attrs.get("indices"), node.attrs.get("factors")
    if indices is None and factors is None:
        b.index[node.outputs[0]] = x
        return
    shape = b.shape(node.inputs[0])
    axis = len(shape) - 1
    form = appended(node, shape[-1])
    steps: list[tuple[str, object]] = []
    if form is not None:
        steps = [("mul", form.head)] if form.head is not None else []
        steps += [("append", form.extra)] if form.extra else []
    else:
        steps = [("gather", indices)] if indices is not None else []
        steps += [("mul", factors)] if factors is not None else []
    out = b.define(node.outputs[0])
    for number, (kind, values) in enumerate(steps):
        last = number == len(steps) - 1
        width = shape[-1] + len(values) if kind == "append" else len(values) if kind == "gather" else shape[-1]  # type: ignore[arg-type]
        shape = [*shape[:-1], width]
        target = out if last else b.model.add_tensor(TflTensor(f"{node.name}_{kind}", shape, FLOAT32))
        if kind == "mul":
            _mul(b, x, b.const(f"{node.name}_factors", np.asarray(values, np.float32), FLOAT32), target)
        elif kind == "gather":
            _gather(b, x, values, axis, target, f"{node.name}_indices")  # type: ignore[arg-type]
        else:
            copies = b.model.add_tensor(TflTensor(f"{node.name}_copies", [*shape[:-1], len(values)], FLOAT32))  # type: ignore[arg-type]
            _gather(b, x, values, axis, copies, f"{node.name}_copy_indices")  # type: ignore[arg-type]
            _concat(b, [x, copies], axis, target)
        x = target


def _gather(b: TflBuilder, x: int, indices: list[int], axis: int, out: int, name: str) -> None:
    picked = b.const(name, np.asarray(indices, np.int32), tflite.TensorType.INT32)

    def options(fb: flatbuffers.Builder) -> int:
        tflite.GatherOptionsStart(fb)
        tflite.GatherOptionsAddAxis(fb, axis)
        return int(tflite.GatherOptionsEnd(fb))

    b.op(Op.GATHER, [x, picked], [out], Options.GatherOptions, options)


def _mul(b: TflBuilder, x: int, factors: int, out: int) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.MulOptionsStart(fb)
        tflite.MulOptionsAddFusedActivationFunction(fb, tflite.ActivationFunctionType.NONE)
        return int(tflite.MulOptionsEnd(fb))

    b.op(Op.MUL, [x, factors], [out], Options.MulOptions, options)


def _concat(b: TflBuilder, parts: list[int], axis: int, out: int) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.ConcatenationOptionsStart(fb)
        tflite.ConcatenationOptionsAddAxis(fb, axis)
        return int(tflite.ConcatenationOptionsEnd(fb))

    b.op(Op.CONCATENATION, parts, [out], Options.ConcatenationOptions, options)
