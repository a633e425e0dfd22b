"""GATHER: rows of a constant table at integer ids (an embedding lookup), and CAST of an
integer input to float (an attention mask). The ids are the model's int32 input; int8, the table and the output share the table's parameters (TFLite's
kernel copies values)."""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.model import TflTensor
from edgetune.export.tflite.ops import Op, Options, tfl_op
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


@tfl_op("cast")
def cast(b: TflBuilder, node: Node) -> None:
    """CAST: int32 values (an attention mask, the model's input like the ids) as float; float in
    the int8 model too (quantize/stream.py)."""
    b.op(Op.CAST, [b.read(node.inputs[0])], [b.define(node.outputs[0])])


@tfl_op("compare")
def compare(b: TflBuilder, node: Node) -> None:
    """EQUAL or NOT_EQUAL with the value in the input's type (int32 or float), then CAST of
    the booleans to int32 0/1 (a mask)."""
    x = b.read(node.inputs[0])
    integer = b.model.tensors[x].dtype == tflite.TensorType.INT32
    value = b.const(
        f"{node.name}_value",
        np.asarray([node.attrs["value"]], np.int32 if integer else np.float32),
        tflite.TensorType.INT32 if integer else FLOAT32,
    )
    flags = b.model.add_tensor(TflTensor(f"{node.name}_bool", list(b.model.tensors[x].shape), tflite.TensorType.BOOL))
    b.op(Op.EQUAL if node.attrs["test"] == "eq" else Op.NOT_EQUAL, [x, value], [flags], version=1)
    b.op(Op.CAST, [flags], [b.define(node.outputs[0])])


@tfl_op("cumsum")
def cumsum(b: TflBuilder, node: Node) -> None:
    """CUMSUM of int32 values along an axis (RoBERTa's position ids)."""
    axis = b.const(f"{node.name}_axis", np.asarray(node.attrs["axis"], np.int32), tflite.TensorType.INT32)
    b.op(Op.CUMSUM, [b.read(node.inputs[0]), axis], [b.define(node.outputs[0])], version=1)


@tfl_op("expand")
def expand(b: TflBuilder, node: Node) -> None:
    """A MUL by int32 ones of the target shape: MUL broadcasts the batch, where BROADCAST_TO
    would need the batch in its shape."""
    ones = b.const(f"{node.name}_ones", np.ones([1, *node.attrs["shape"]], np.int32), tflite.TensorType.INT32)
    b.op(Op.MUL, [b.read(node.inputs[0]), ones], [b.define(node.outputs[0])], version=1)


@tfl_op("channels")
def channels(b: TflBuilder, node: Node) -> None:
    """Channels of the last axis scaled (MUL), and copies of some appended (GATHER of those
    alone and CONCATENATION), in float: the outlier split of quantize/stream.py. The writer
    runs it as a float op, so an int8 input arrives dequantized and an int8 output is
    quantized after it; an identity writes no operator. (Copies as STRIDED_SLICEs, which
    XNNPACK takes where it leaves GATHER to LiteRT, measured slower on MiniLM: 6.17 against
    5.84 ms.)"""
    x = b.read(node.inputs[0])
    factors, copies = node.attrs["factors"], node.attrs["copies"]
    if factors is None and not copies:
        b.index[node.outputs[0]] = x
        return
    out = b.define(node.outputs[0])
    shape = b.shape(node.inputs[0])
    axis = len(shape) - 1
    if factors is not None:
        scaled = out if not copies else b.model.add_tensor(TflTensor(f"{node.name}_mul", shape, FLOAT32))
        _mul(b, x, b.const(f"{node.name}_factors", np.asarray(factors, np.float32), FLOAT32), scaled)
        x = scaled
    if copies:
        copied = b.model.add_tensor(TflTensor(f"{node.name}_copies", [*shape[:-1], len(copies)], FLOAT32))
        _gather(b, x, copies, axis, copied, f"{node.name}_copy_indices")
        _concat(b, [x, copied], axis, out)


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
