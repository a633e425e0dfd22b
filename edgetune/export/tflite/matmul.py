"""A product of two activations (attention's scores and its weighted values): BATCH_MATMUL,
int8 on both sides, on [batch, rows, cols] or [batch, heads, rows, cols] tensors (the latter
kept in PyTorch's order, see :func:`edgetune.export.tflite.layout.plain_tensors`)."""

from __future__ import annotations

import flatbuffers
import tflite

from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.layout import needs_plain
from edgetune.export.tflite.ops import UNSUPPORTED_CHECKS, Op, Options, tfl_op
from edgetune.ir.graph import Graph, Node

BATCH_MATMUL_INT8 = 2  # op_version.cc: an int8 BATCH_MATMUL (TFLite 2.3)


@tfl_op("matmul")
def matmul(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.BatchMatMulOptionsStart(fb)
        return int(tflite.BatchMatMulOptionsEnd(fb))

    version = BATCH_MATMUL_INT8 if b.quantized else 1
    if b.quantized:
        b.require_runtime("2.3.0")
    inputs = [b.read(name) for name in node.inputs]
    b.op(Op.BATCH_MATMUL, inputs, [b.define(node.outputs[0])], Options.BatchMatMulOptions, options, version)


def _batched(graph: Graph, node: Node) -> str | None:
    ranks = [len(graph.tensors[name].shape) for name in node.inputs]
    if ranks[0] != ranks[1] or ranks[0] not in (3, 4):
        return "a matrix product of tensors other than [batch, rows, cols] or [batch, heads, rows, cols]"
    return needs_plain(graph, node)


UNSUPPORTED_CHECKS["matmul"] = _batched
