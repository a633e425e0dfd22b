"""1-D convolutions and pools, lowered as their 2-D forms on a unit height.

Neither runtime's int8 kernels take a 1-D convolution as such (TFLite's converter writes a
Conv1d the same way: a reshape to NHWC with H = 1, CONV_2D, a reshape back). Each op here
becomes reshape -> 2-D op -> reshape; :func:`edgetune.ir.passes.drop_unit_reshapes` then
moves BatchNorm and activations across those reshapes and cancels the back-to-back pairs,
so a chain of 1-D layers runs as one chain of 2-D ones, BatchNorm folded and ReLU fused.
"""

from __future__ import annotations

from typing import Any

import torch.fx

from edgetune.capture.lowerings import _arg, _int, _ints
from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


def _one(value: Any) -> int:
    values = [value] if isinstance(value, int) else _ints(value)
    return int(values[0])


def _wrap_2d(ctx: LoweringContext, node: torch.fx.Node, op: str, inputs: list[str], **attrs: Any) -> None:
    """reshape [N, C, L] -> [N, C, 1, L], the 2-D op, reshape back to the node's shape."""
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)  # type: ignore[arg-type]
    if len(in_shape) != 3:
        raise InputError(f"{node.name} ({node.target}) on a rank-{len(in_shape)} input", "give 1-D layers [batch, channels, length]")
    x = ctx.emit_inner(
        "reshape",
        node,
        "in2d",
        [inputs[0]],
        tensor_shape=(in_shape[0], in_shape[1], 1, in_shape[2]),
        helper=True,
        shape=[in_shape[1], 1, in_shape[2]],
    )
    y = ctx.emit_inner(op, node, op, [x, *inputs[1:]], tensor_shape=(out_shape[0], out_shape[1], 1, out_shape[2]), **attrs)
    ctx.emit("reshape", node, [y], helper=True, shape=list(out_shape[1:]))


@lowers(aten.conv1d.default, aten.conv1d.padding)
def conv1d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    weight = ctx.const(node.args[1])
    if weight is None:
        raise InputError(f"{node.name} takes its weight from another tensor", "give Conv1d a constant weight")
    bias = _arg(node, 2, "bias", None)
    stride, dilation = _one(_arg(node, 3, "stride", 1)), _one(_arg(node, 5, "dilation", 1))
    padding = _arg(node, 4, "padding", 0)
    kernel = weight.shape[2]
    if isinstance(padding, str):
        if padding == "same" and stride != 1:
            raise InputError("conv1d with padding='same' and a stride", "pad explicitly")
        total = dilation * (kernel - 1) if padding == "same" else 0
        left, right = total // 2, total - total // 2
    else:
        left = right = _one(padding)
    inputs = [ctx.name(node.args[0]), ctx.constant(f"{ctx.resolve(node.args[1])}_2d", weight[:, :, None, :])]
    if bias is not None:
        inputs.append(ctx.name(bias))
    groups = int(_arg(node, 6, "groups", 1))
    _wrap_2d(ctx, node, "conv2d", inputs, stride=[1, stride], pads=[0, left, 0, right], dilation=[1, dilation], groups=groups)


@lowers(aten.max_pool1d.default)
def max_pool1d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    kernel = _one(node.args[1])
    stride = _one(_arg(node, 2, "stride", []) or kernel)
    pad = _one(_arg(node, 3, "padding", 0))
    if _one(_arg(node, 4, "dilation", 1)) != 1 or _arg(node, 5, "ceil_mode", False):
        raise InputError("max_pool1d with dilation or ceil_mode", "use the defaults")
    _wrap_2d(ctx, node, "maxpool2d", [ctx.name(node.args[0])], kernel=[1, kernel], stride=[1, stride], pads=[0, pad, 0, pad])


@lowers(aten.avg_pool1d.default)
def avg_pool1d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    kernel = _one(node.args[1])
    stride = _one(_arg(node, 2, "stride", []) or kernel)
    pad = _one(_arg(node, 3, "padding", 0))
    if _arg(node, 4, "ceil_mode", False) or (pad and not _arg(node, 5, "count_include_pad", True)):
        raise InputError("avg_pool1d with ceil_mode or count_include_pad=False", "use the defaults")
    _wrap_2d(ctx, node, "avgpool2d", [ctx.name(node.args[0])], kernel=[1, kernel], stride=[1, stride], pads=[0, pad, 0, pad])


@lowers(aten.adaptive_avg_pool1d.default)
def adaptive_avg_pool1d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    length, out = ctx.shape(node.args[0])[2], _int(_ints(node.args[1])[0])  # type: ignore[arg-type]
    if length % out:
        raise InputError(f"adaptive_avg_pool1d from length {length} to {out}", "use an output length that divides the input")
    kernel = length // out
    if out == 1:  # a mean over the steps: MEAN, which XNNPACK delegates in int8 (AVERAGE_POOL_2D it does not)
        _wrap_2d(ctx, node, "global_avgpool", [ctx.name(node.args[0])])
        return
    _wrap_2d(ctx, node, "avgpool2d", [ctx.name(node.args[0])], kernel=[1, kernel], stride=[1, kernel], pads=[0, 0, 0, 0])
