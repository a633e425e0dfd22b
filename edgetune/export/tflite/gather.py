"""GATHER: rows of a constant table at integer ids (an embedding lookup). The ids are the
model's int32 input; int8, the table and the output share the table's parameters (TFLite's
kernel copies values)."""

from __future__ import annotations

import flatbuffers
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.ops import Op, Options, tfl_op
from edgetune.ir.graph import Node


@tfl_op("gather")
def gather(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.GatherOptionsStart(fb)
        tflite.GatherOptionsAddAxis(fb, 0)
        return int(tflite.GatherOptionsEnd(fb))

    table, ids = b.read(node.inputs[1], nhwc=False), b.read(node.inputs[0])
    b.op(Op.GATHER, [table, ids], [b.define(node.outputs[0])], Options.GatherOptions, options)
