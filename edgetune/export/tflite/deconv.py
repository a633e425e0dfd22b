"""ConvTranspose2d as a sub-pixel convolution: PAD, CONV_2D, DEPTH_TO_SPACE, STRIDED_SLICE.

A transposed convolution of stride s writes output row s*q + a from input rows q - m through
kernel tap a + s*m. Grouped by phase a, that is an ordinary convolution with ceil(k/s) taps
(reversed) over the input padded by ceil(k/s) - 1 zeros, one set of output channels per phase
(s*s sets, in DEPTH_TO_SPACE's order), interleaved by DEPTH_TO_SPACE and cropped by the
padding. Every operator here is one XNNPACK delegates in int8, and the batch axis stays free:
TRANSPOSE_CONV takes its output shape as a constant, batch included, and a non-constant shape
is not delegated. The int8 weights are the layer's own levels moved, and each phase channel
keeps its output channel's scale, so the integer sums are the ones ONNX's ConvTranspose makes.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite

from edgetune.export.tflite import layout
from edgetune.export.tflite.builder import ACTIVATIONS, TflBuilder
from edgetune.export.tflite.model import QuantSpec
from edgetune.export.tflite.ops import UNSUPPORTED_CHECKS, Op, Options, _FloatIsland, tfl_op
from edgetune.ir.graph import Graph, Node
from edgetune.ir.quant import quantize_array


def unsupported(graph: Graph, node: Node) -> str | None:
    """Why this transposed convolution has no sub-pixel form, or None."""
    stride, (top, left) = node.attrs["stride"], node.attrs["pads"][:2]
    if stride[0] != stride[1]:
        return "ConvTranspose2d with unequal strides (DEPTH_TO_SPACE takes one block size)"
    if node.attrs.get("precision") == "int16":
        return "ConvTranspose2d with int16 activations"
    kernel = graph.tensors[node.inputs[1]].shape[2:]
    for k, pad, extra in zip(kernel, (top, left), node.attrs["output_padding"]):
        if k + extra - pad > -(-k // stride[0]) * stride[0]:  # the crop would end past the interleaved phases
            return "ConvTranspose2d whose output_padding exceeds its padding"
    return None


UNSUPPORTED_CHECKS["conv_transpose2d"] = unsupported


def phase_weight(weight: np.ndarray, stride: int) -> np.ndarray:
    """[O, I, k, k] -> [s*s*O, I, K, K], K = ceil(k / s): channel (a*s + b)*O + o holds the taps
    that reach output phase (a, b), reversed so that a correlation applies them."""
    out_ch, in_ch, kh, kw = weight.shape
    taps_h, taps_w = -(-kh // stride), -(-kw // stride)
    phases = np.zeros((stride, stride, out_ch, in_ch, taps_h, taps_w), weight.dtype)
    for a in range(stride):
        for j in range(taps_h):
            row = a + stride * (taps_h - 1 - j)
            if row >= kh:
                continue
            for c in range(stride):
                for m in range(taps_w):
                    col = c + stride * (taps_w - 1 - m)
                    if col < kw:
                        phases[a, c, :, :, j, m] = weight[:, :, row, col]
    return phases.reshape(stride * stride * out_ch, in_ch, taps_h, taps_w)


def _phase_constants(b: TflBuilder, node: Node, quantized: bool) -> tuple[int, int]:
    """The phase convolution's weight (OHWI) and bias tensors, int8/int32 or float."""
    stride = node.attrs["stride"][0]
    weight, phases = b.graph.tensors[node.inputs[1]], stride * stride
    bias = b.graph.tensors[node.inputs[2]] if len(node.inputs) > 2 else None
    if quantized and weight.quant is not None:
        q = weight.quant
        levels = layout.conv_weight(phase_weight(quantize_array(weight.int8_source, q), stride))  # type: ignore[arg-type]
        scales = np.tile(q.scale, phases if q.axis is not None else 1)
        w = b.const(f"{weight.name}_phases", levels, tflite.TensorType.INT8, QuantSpec([float(s) for s in scales], [0] * len(scales), 0))
        if bias is None or bias.quant is None:
            return w, -1
        bias_levels = np.tile(quantize_array(bias.int8_source, bias.quant), phases)  # type: ignore[arg-type]
        bias_scales = np.tile(bias.quant.scale, phases if bias.quant.axis is not None else 1)
        spec = QuantSpec([float(s) for s in bias_scales], [0] * len(bias_scales), 0)
        return w, b.const(f"{bias.name}_phases", bias_levels.astype(np.int32), tflite.TensorType.INT32, spec)
    assert weight.data is not None
    w = b.const(
        f"{weight.name}_phases", layout.conv_weight(phase_weight(weight.data, stride)).astype(np.float32), tflite.TensorType.FLOAT32
    )
    if bias is None:
        return w, -1
    assert bias.data is not None
    return w, b.const(f"{bias.name}_phases", np.tile(bias.data, phases).astype(np.float32), tflite.TensorType.FLOAT32)


@tfl_op("conv_transpose2d")
def conv_transpose2d(b: TflBuilder, node: Node) -> None:
    stride = node.attrs["stride"][0]
    kernel = b.graph.tensors[node.inputs[1]].shape[2:]
    taps = [-(-k // stride) for k in kernel]
    island = _FloatIsland(b, node)
    x = b.read(node.inputs[0])
    n, h, w, _ = b.model.tensors[x].shape
    if taps != [1, 1]:
        padded = b.like(f"{node.name}_padded", [n, h + 2 * (taps[0] - 1), w + 2 * (taps[1] - 1), b.model.tensors[x].shape[3]], x)
        pads = [[0, 0], [taps[0] - 1, taps[0] - 1], [taps[1] - 1, taps[1] - 1], [0, 0]]
        b.op(Op.PAD, [x, b.const(f"{node.name}_pads", np.asarray(pads, np.int32), tflite.TensorType.INT32)], [padded])
        x = padded
    x = island.input(x)
    out = island.output()
    weight, bias = _phase_constants(b, node, b.quantized and not island.active)
    channels = b.graph.tensors[node.outputs[0]].shape[1]
    rows, cols = h + taps[0] - 1, w + taps[1] - 1
    phases = b.like(f"{node.name}_phases", [n, rows, cols, stride * stride * channels], out)
    act = ACTIVATIONS[node.act]

    def conv_options(fb: flatbuffers.Builder) -> int:
        tflite.Conv2DOptionsStart(fb)
        tflite.Conv2DOptionsAddPadding(fb, tflite.Padding.VALID)
        tflite.Conv2DOptionsAddStrideW(fb, 1)
        tflite.Conv2DOptionsAddStrideH(fb, 1)
        tflite.Conv2DOptionsAddFusedActivationFunction(fb, act)
        return int(tflite.Conv2DOptionsEnd(fb))

    b.op(Op.CONV_2D, [x, weight, bias], [phases], Options.Conv2DOptions, conv_options, island.version(Op.CONV_2D))
    _interleave_and_crop(b, node, phases, out, stride)
    island.finish(out)


def _interleave_and_crop(b: TflBuilder, node: Node, phases: int, out: int, stride: int) -> None:
    n, rows, cols, depth = b.model.tensors[phases].shape
    top, left = node.attrs["pads"][:2]
    out_h, out_w = b.graph.tensors[node.outputs[0]].shape[2:]
    whole = [n, rows * stride, cols * stride, depth // (stride * stride)]
    crop = [whole[1], whole[2]] != [out_h, out_w] or top or left
    spread = b.like(f"{node.name}_spread", whole, out) if crop else out

    def options(fb: flatbuffers.Builder) -> int:
        tflite.DepthToSpaceOptionsStart(fb)
        tflite.DepthToSpaceOptionsAddBlockSize(fb, stride)
        return int(tflite.DepthToSpaceOptionsEnd(fb))

    b.op(Op.DEPTH_TO_SPACE, [phases], [spread], Options.DepthToSpaceOptions, options)
    if not crop:
        return
    begin, end = [0, top, left, 0], [n, top + out_h, left + out_w, whole[3]]

    def slice_options(fb: flatbuffers.Builder) -> int:
        tflite.StridedSliceOptionsStart(fb)
        tflite.StridedSliceOptionsAddEndMask(fb, 1)  # the batch axis runs to its end
        return int(tflite.StridedSliceOptionsEnd(fb))

    consts = [b.int32_const(f"{node.name}_{part}", values) for part, values in (("begin", begin), ("end", end), ("strides", [1, 1, 1, 1]))]
    b.op(Op.STRIDED_SLICE, [spread, *consts], [out], Options.StridedSliceOptions, slice_options)
