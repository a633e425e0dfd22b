"""Transformer parts: LayerNorm, batched matrix products, and ``nn.MultiheadAttention``.

``nn.MultiheadAttention`` moves the batch axis inside its ``forward`` (it works sequence-first
and folds the heads into the batch), which no edge runtime's int8 graph can follow with a
free batch axis. Before capture, each one (``batch_first=True``) is replaced by
:class:`HeadwiseAttention`: the same weights and the same function, computed head by head on
[batch, steps, features] tensors, with the query scaling folded into the query projection.
The user's model is not modified: the replacement happens on a copy.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from edgetune.capture.lowerings import _arg, _int, _ints
from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


def _projection(weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight * scale)
        if bias is not None:
            layer.bias.copy_(bias * scale)
    return layer


class HeadwiseAttention(nn.Module):
    """``nn.MultiheadAttention(batch_first=True)`` without masks, head by head."""

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        dim, heads = source.embed_dim, source.num_heads
        if not source.batch_first or not source._qkv_same_embed_dim or source.bias_k is not None or source.add_zero_attn:
            raise InputError(
                "nn.MultiheadAttention without batch_first, with separate key/value sizes, bias_k or add_zero_attn",
                "use batch_first=True and the default options",
            )
        weight = source.in_proj_weight.detach()
        bias = source.in_proj_bias.detach() if source.in_proj_bias is not None else None
        part = [slice(i * dim, (i + 1) * dim) for i in range(3)]
        self.q_proj = _projection(weight[part[0]], None if bias is None else bias[part[0]], (dim // heads) ** -0.5)
        self.k_proj = _projection(weight[part[1]], None if bias is None else bias[part[1]])
        self.v_proj = _projection(weight[part[2]], None if bias is None else bias[part[2]])
        self.out_proj = _projection(
            source.out_proj.weight.detach(), None if source.out_proj.bias is None else source.out_proj.bias.detach()
        )
        self.heads, self.head_dim = heads, dim // heads
        # What nn.TransformerEncoderLayer reads before calling its attention: without an in_proj_bias
        # it takes its plain path (its fused fast path would skip this module).
        self.batch_first, self._qkv_same_embed_dim, self.in_proj_bias = True, True, None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise InputError("nn.MultiheadAttention with a mask", "export the model without attention masks")
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        heads = []
        for head in range(self.heads):
            cols = slice(head * self.head_dim, (head + 1) * self.head_dim)
            scores = torch.bmm(q[..., cols], k[..., cols].transpose(1, 2))
            heads.append(torch.bmm(scores.softmax(-1), v[..., cols]))
        return self.out_proj(torch.cat(heads, -1)), None


def with_headwise_attention(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it whose ``nn.MultiheadAttention`` modules are headwise."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, child_name, HeadwiseAttention(child))
    return model


@lowers(aten.layer_norm.default)
def layer_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    shape = _ints(node.args[1])
    if len(shape) != 1:
        raise InputError(f"{node.name}: LayerNorm over {len(shape)} axes", "normalize over the last axis only")
    weight, bias = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
    gamma = ctx.const(weight) if weight is not None else np.ones(shape, np.float32)
    beta = ctx.const(bias) if bias is not None else np.zeros(shape, np.float32)
    if gamma is None or beta is None:
        raise InputError(f"{node.name}: LayerNorm with computed scales", "give LayerNorm its own parameters")
    inputs = [ctx.name(node.args[0]), ctx.constant(f"{node.name}.weight", gamma), ctx.constant(f"{node.name}.bias", beta)]
    ctx.emit("layer_norm", node, inputs, eps=float(_arg(node, 4, "eps", 1e-5)))


@lowers(aten.group_norm.default)
def group_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """GroupNorm over [N, C, H, W] (or [N, C, L]): statistics per sample and group of channels."""
    shape = ctx.shape(node.args[0])  # type: ignore[arg-type]
    groups = _int(node.args[1])
    _emit_group_norm(
        ctx, node, shape, groups, _arg(node, 2, "weight", None), _arg(node, 3, "bias", None), float(_arg(node, 4, "eps", 1e-5))
    )


@lowers(aten.instance_norm.default)
def instance_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """InstanceNorm: GroupNorm with a group per channel (running statistics are refused)."""
    if not _arg(node, 5, "use_input_stats", True):
        raise InputError(f"{node.name}: InstanceNorm with track_running_stats", "use BatchNorm, or InstanceNorm without running statistics")
    shape = ctx.shape(node.args[0])  # type: ignore[arg-type]
    _emit_group_norm(
        ctx, node, shape, shape[1], _arg(node, 1, "weight", None), _arg(node, 2, "bias", None), float(_arg(node, 7, "eps", 1e-5))
    )


def _emit_group_norm(
    ctx: LoweringContext, node: torch.fx.Node, shape: tuple[int, ...], groups: int, weight: Any, bias: Any, eps: float
) -> None:
    if len(shape) != 4:
        raise InputError(f"{node.name}: group or instance norm over a rank-{len(shape)} tensor", "normalize [N, C, H, W] feature maps")
    channels = shape[1]
    gamma = ctx.const(weight) if weight is not None else np.ones(channels, np.float32)
    beta = ctx.const(bias) if bias is not None else np.zeros(channels, np.float32)
    if gamma is None or beta is None or channels % groups:
        raise InputError(f"{node.name}: a group norm with computed scales or uneven groups", "give it its own parameters")
    inputs = [ctx.name(node.args[0]), ctx.constant(f"{node.name}.weight", gamma), ctx.constant(f"{node.name}.bias", beta)]
    ctx.emit("group_norm", node, inputs, groups=groups, eps=eps)


@lowers(aten.bmm.default, aten.matmul.default)
def matmul(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """Two activations of one rank (3 or 4), or an activation times a constant matrix (a
    linear layer without bias)."""
    shapes = [ctx.shape(arg) for arg in node.args[:2]]  # type: ignore[arg-type]
    weight = ctx.const(node.args[1])
    if weight is not None and weight.ndim == 2 and ctx.const(node.args[0]) is None and len(shapes[0]) <= 3:
        ctx.emit("linear", node, [ctx.name(node.args[0]), ctx.constant(f"{ctx.resolve(node.args[1])}_t", weight.T)])
        return
    if len(shapes[0]) != len(shapes[1]) or len(shapes[0]) not in (3, 4) or any(ctx.const(a) is not None for a in node.args[:2]):
        raise InputError(f"{node.name}: a matrix product of {[list(s) for s in shapes]}", "multiply two activations of rank 3 or 4")
    ctx.emit("matmul", node, [ctx.name(node.args[0]), ctx.name(node.args[1])])


@lowers(aten.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """softmax(q k^T * scale) v, as matmul, multiply, softmax, matmul."""
    q, k, v = node.args[:3]
    if _arg(node, 3, "attn_mask", None) is not None or _arg(node, 5, "is_causal", False):
        raise InputError(f"{node.name}: attention with a mask", "export the model without attention masks")
    q_shape, k_shape = ctx.shape(q), ctx.shape(k)  # type: ignore[arg-type]
    scale = _arg(node, 6, "scale", None)
    scale = float(scale) if scale is not None else float(q_shape[-1]) ** -0.5
    rank = len(k_shape)
    keys_t = (*k_shape[:-2], k_shape[-1], k_shape[-2])
    perm = [*range(rank - 2), rank - 1, rank - 2]
    k_t = ctx.emit_inner("transpose", node, "keys_t", [ctx.name(k)], tensor_shape=keys_t, perm=perm)
    scores_shape = (*q_shape[:-1], k_shape[-2])
    scores = ctx.emit_inner("matmul", node, "scores", [ctx.name(q), k_t], tensor_shape=scores_shape)
    scaled = ctx.emit_inner("mul", node, "scaled", [scores, ctx.name(scale)], tensor_shape=scores_shape)
    weights = ctx.emit_inner("softmax", node, "weights", [scaled], tensor_shape=scores_shape, axis=rank - 1)
    ctx.emit("matmul", node, [weights, ctx.name(v)])


@lowers(aten.expand.default)
def expand(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """A constant repeated over the batch (a class token): a constant of batch 1, which the
    concatenation that reads it adds in; or an attention mask spread over the scores' shape."""
    source = ctx.const(node.args[0])
    if source is None:
        expand_integers(ctx, node)
        return
    ctx.constants[node.name] = np.broadcast_to(source, ctx.shape(node)).astype(np.float32).copy()


def expand_integers(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """An integer activation (an attention mask) broadcast to a larger shape: ``expand``.
    Float activations are refused: nothing in the models met so far expands one."""
    source = node.args[0]
    if not isinstance(source, torch.fx.Node) or ctx.dtype(source) != "int64":
        raise InputError(f"{node.name}: expand of an activation", "expand constants (a class token) or a mask only")
    ctx.emit("expand", node, [ctx.name(source)], shape=list(ctx.shape(node)[1:]))
