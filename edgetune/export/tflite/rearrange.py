"""PyTorch's pixel_shuffle and F.normalize.

TFLite's DEPTH_TO_SPACE orders the input channels block-major ((i * r + j) * C + c), PyTorch's
pixel_shuffle channel-major (c * r * r + i * r + j), so the shuffle is written as a reshape to
[N, H, W, C, r, r], a 6-D transpose to [N, H, r, W, r, C] and a reshape to [N, H*r, W*r, C]:
a permutation of bytes, exact in int8, which XNNPACK runs. ``F.normalize`` over the channels (or
the last axis) is L2_NORMALIZATION, whose int8 output has TFLite's fixed grid (1/128, 0).
"""

from __future__ import annotations

import flatbuffers
import tflite

from edgetune.export.tflite import layout
from edgetune.export.tflite.builder import TflBuilder
from edgetune.export.tflite.ops import UNSUPPORTED_CHECKS, Op, Options, _reshape_op, tfl_op
from edgetune.ir.graph import Graph, Node

TRANSPOSE_6D = 6  # op_version.cc: a TRANSPOSE of more than 5 dimensions


@tfl_op("depth_to_space")
def depth_to_space(b: TflBuilder, node: Node) -> None:
    x, out = b.read(node.inputs[0]), b.define(node.outputs[0])
    n, h, w, depth = b.model.tensors[x].shape
    block = node.attrs["block"]
    channels = depth // (block * block)
    grouped = b.like(f"{node.name}_grouped", [n, h, w, channels, block, block], x)
    _reshape_op(b, x, b.model.tensors[grouped].shape, grouped, f"{node.name}_grouped")
    spread = b.like(f"{node.name}_spread", [n, h, block, w, block, channels], x)
    b.op(Op.TRANSPOSE, [grouped, b.int32_const(f"{node.name}_perm", [0, 1, 4, 2, 5, 3])], [spread], version=TRANSPOSE_6D)
    b.require_runtime("2.12.0")  # runtime_version.cc: TRANSPOSE version 6
    _reshape_op(b, spread, b.model.tensors[out].shape, out, node.name)


@tfl_op("l2_normalize")
def l2_normalize(b: TflBuilder, node: Node) -> None:
    def options(fb: flatbuffers.Builder) -> int:
        tflite.L2NormOptionsStart(fb)
        return int(tflite.L2NormOptionsEnd(fb))

    b.op(Op.L2_NORMALIZATION, [b.read(node.inputs[0])], [b.define(node.outputs[0])], Options.L2NormOptions, options)


def _last_axis_in_file(graph: Graph, node: Node) -> str | None:
    rank, axis = len(graph.tensors[node.inputs[0]].shape), node.attrs["axis"]
    stored = layout.nhwc_axis(axis, rank) if rank == 4 and node.inputs[0] not in layout.plain_tensors(graph) else axis
    if stored != rank - 1:
        return "F.normalize over an axis other than the channels or the last"
    return None


UNSUPPORTED_CHECKS["l2_normalize"] = _last_axis_in_file
