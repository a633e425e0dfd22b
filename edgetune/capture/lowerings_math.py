"""Small reductions and arithmetic, written with the IR's existing ops where one exists:
``sum`` is a mean times the count, ``amax`` and adaptive max pooling a max pool over the map,
``-x`` and ``c - x`` a multiply and a subtract, ``x ** 2`` a multiply. ``F.normalize`` (a norm,
clamped, expanded and divided by) becomes one L2 normalization, ``pixel_shuffle`` a
depth-to-space, and ELU, Softplus and Mish the float-computed activations."""

from __future__ import annotations

import numpy as np
import torch.fx

from edgetune.capture.lowerings import _arg, _axis, _int, _ints, _pair
from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


@lowers(aten.sum.dim_IntList)
def sum_(ctx: LoweringContext, node: torch.fx.Node) -> None:
    shape = ctx.shape(node.args[0])  # type: ignore[arg-type]
    dims = sorted(_axis(_int(d), len(shape)) for d in _ints(node.args[1]))
    if 0 in dims:
        raise InputError(f"{node.name} sums over the batch axis", "keep axis 0 whole")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    count = float(np.prod([shape[d] for d in dims]))
    if len(shape) == 4 and dims == [2, 3] and keepdim:
        mean = ctx.emit_inner("global_avgpool", node, "mean", [ctx.name(node.args[0])])
    else:
        mean = ctx.emit_inner("mean", node, "mean", [ctx.name(node.args[0])], axes=dims, keepdim=keepdim)
    ctx.emit("mul", node, [mean, ctx.name(count)])


def _max_over_map(ctx: LoweringContext, node: torch.fx.Node, out_size: tuple[int, int], keep_map: bool) -> None:
    """A max pool whose windows tile the map into ``out_size`` cells."""
    _, _, height, width = ctx.shape(node.args[0])  # type: ignore[arg-type]
    if height % out_size[0] or width % out_size[1]:
        raise InputError(f"{node.name}: max pooling from {height}x{width} to {out_size}", "use output sizes that divide the input")
    kernel = [height // out_size[0], width // out_size[1]]
    x = ctx.name(node.args[0])
    if keep_map:
        ctx.emit("maxpool2d", node, [x], kernel=kernel, stride=kernel, pads=[0, 0, 0, 0])
        return
    batch, channels = ctx.shape(node.args[0])[:2]  # type: ignore[arg-type]
    pooled = ctx.emit_inner(
        "maxpool2d", node, "pool", [x], tensor_shape=(batch, channels, 1, 1), kernel=kernel, stride=kernel, pads=[0, 0, 0, 0]
    )
    ctx.emit("reshape", node, [pooled], shape=list(ctx.shape(node)[1:]))


@lowers(aten.adaptive_max_pool2d.default)
def adaptive_max_pool2d(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """Returns (values, indices): the values are read through getitem 0."""
    node.meta["val"] = node.meta["val"][0]
    _max_over_map(ctx, node, _pair(node.args[1]), keep_map=True)
    ctx.tuples[node.name] = [node.name, f"{node.name}_indices"]
    ctx.unreadable[f"{node.name}_indices"] = "a max pool's indices, which edgetune does not compute"


@lowers(aten.amax.default)
def amax(ctx: LoweringContext, node: torch.fx.Node) -> None:
    shape = ctx.shape(node.args[0])  # type: ignore[arg-type]
    dims = sorted(_axis(_int(d), len(shape)) for d in _ints(node.args[1]))
    if len(shape) != 4 or dims != [2, 3]:
        raise InputError(f"{node.name}: a max over axes {dims} of a rank-{len(shape)} tensor", "take the max over the spatial axes (2, 3)")
    _max_over_map(ctx, node, (1, 1), keep_map=bool(_arg(node, 2, "keepdim", False)))


@lowers(aten.neg.default)
def neg(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("mul", node, [ctx.name(node.args[0]), ctx.name(-1.0)])


@lowers(aten.rsub.Scalar)
def rsub(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """``c - x``."""
    if _arg(node, 2, "alpha", 1) != 1:
        raise InputError(f"{node.name}: rsub with alpha", "write the scaling as a separate multiplication")
    ctx.emit("sub", node, [ctx.name(float(node.args[1])), ctx.name(node.args[0])])  # type: ignore[arg-type]


@lowers(aten.pow.Tensor_Scalar)
def pow_(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """x ** 2 and x ** 3 (the tanh form of GELU as ALBERT and GPT-2 write it) as products."""
    if node.args[1] not in (2, 3):
        raise InputError(f"{node.name}: a power of {node.args[1]}", "use x * x (squares and cubes are supported)")
    x = ctx.name(node.args[0])
    if node.args[1] == 2:
        ctx.emit("mul", node, [x, x])
        return
    square = ctx.emit_inner("mul", node, "square", [x, x], helper=True)
    ctx.emit("mul", node, [square, x])


@lowers(aten.linalg_vector_norm.default)
def vector_norm(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """No node of its own: ``F.normalize`` divides by it (see :func:`normalized`)."""
    dims = _ints(_arg(node, 2, "dim", []) or [])
    if float(_arg(node, 1, "ord", 2.0)) != 2.0 or len(dims) != 1 or not _arg(node, 3, "keepdim", False):
        raise InputError(f"{node.name}: a norm other than F.normalize's", "use F.normalize(x, dim=...)")
    ctx.norms[node.name] = (ctx.resolve(node.args[0]), _axis(dims[0], len(ctx.shape(node))), 0.0)


@lowers(aten.clamp_min.default, aten.expand_as.default)
def norm_guard(ctx: LoweringContext, node: torch.fx.Node) -> None:
    """The clamp of a norm away from zero, and its expansion to the input's shape."""
    source = ctx.resolve(node.args[0])
    if source not in ctx.norms and node.target == aten.expand_as.default:
        from edgetune.capture.attention import expand_integers  # a mask spread over the scores

        expand_integers(ctx, node)
        return
    if source not in ctx.norms:
        raise InputError(f"{node.name}: {node.target} outside F.normalize", "use F.normalize, or torch.clamp")
    x, axis, eps = ctx.norms[source]
    if node.target == aten.clamp_min.default:  # F.normalize clamps its norm away from zero
        eps = float(node.args[1])  # type: ignore[arg-type]
    ctx.norms[node.name] = (x, axis, eps)


def normalized(ctx: LoweringContext, node: torch.fx.Node) -> bool:
    """``x / norm(x)``: emit an L2 normalization and say so, else leave the division alone."""
    divisor = node.args[1]
    if not isinstance(divisor, torch.fx.Node) or ctx.resolve(divisor) not in ctx.norms:
        return False
    x, axis, eps = ctx.norms[ctx.resolve(divisor)]
    if x != ctx.resolve(node.args[0]):
        return False
    value = ctx.const(node.args[0])
    if value is not None:  # a normalized constant (a cosine classifier's weight): computed now
        norm = np.sqrt((value.astype(np.float64) ** 2).sum(axis=axis, keepdims=True))
        ctx.constants[node.name] = (value / np.maximum(norm, eps)).astype(np.float32)
        return True
    ctx.emit("l2_normalize", node, [ctx.name(node.args[0])], axis=axis, eps=eps)
    return True


@lowers(aten.pixel_shuffle.default)
def pixel_shuffle(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("depth_to_space", node, [ctx.name(node.args[0])], block=_int(node.args[1]))


@lowers(aten.elu.default, aten.elu_.default)
def elu(ctx: LoweringContext, node: torch.fx.Node) -> None:
    if float(_arg(node, 2, "scale", 1.0)) != 1.0 or float(_arg(node, 3, "input_scale", 1.0)) != 1.0:
        raise InputError(f"{node.name}: a scaled ELU (SELU)", "use nn.ELU")
    ctx.emit("elu", node, [ctx.name(node.args[0])], alpha=float(_arg(node, 1, "alpha", 1.0)))


@lowers(aten.softplus.default)
def softplus(ctx: LoweringContext, node: torch.fx.Node) -> None:
    if float(_arg(node, 1, "beta", 1.0)) != 1.0 or float(_arg(node, 2, "threshold", 20.0)) < 15.0:
        raise InputError(f"{node.name}: softplus with beta other than 1 or a low threshold", "use nn.Softplus()")
    ctx.emit("softplus", node, [ctx.name(node.args[0])])


@lowers(aten.mish.default, aten.mish_.default)
def mish(ctx: LoweringContext, node: torch.fx.Node) -> None:
    ctx.emit("mish", node, [ctx.name(node.args[0])])
