"""NCHW (the IR, PyTorch) to NHWC (TFLite) layout.

4-D activations are images and go NHWC, but for those of attention ([batch, heads, steps,
features], read by a matrix product or a softmax over the last axis): :func:`plain_tensors`
finds them, and the TFLite file keeps them in the IR's order. Reshapes and transposes convert
between the two.
"""

from __future__ import annotations

import numpy as np

from edgetune.ir.graph import ACTIVATION_OPS, Graph, Node

# Ops whose input and output share a layout, whichever it is.
SAME_LAYOUT = ACTIVATION_OPS | {"add", "sub", "mul", "div", "cast", "compare", "expand", "slice", "concat", "mean"}
# Ops that only make sense on images: their tensors are NHWC.
SPATIAL = {
    "conv2d",
    "conv_transpose2d",
    "maxpool2d",
    "avgpool2d",
    "global_avgpool",
    "resize",
    "pad",
    "prelu",
    "batch_norm",
    "depth_to_space",
}

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)


def nhwc_shape(shape: tuple[int, ...] | list[int]) -> list[int]:
    shape = list(shape)
    return [shape[i] for i in NCHW_TO_NHWC] if len(shape) == 4 else shape


def nhwc_axis(axis: int, rank: int) -> int:
    """Where an NCHW axis lands in NHWC."""
    return NCHW_TO_NHWC.index(axis) if rank == 4 else axis


def conv_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW -> OHWI (CONV_2D)."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1))


def depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """(C*m, 1, kh, kw) -> (1, kh, kw, C*m) (DEPTHWISE_CONV_2D; channels on axis 3)."""
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0))


def is_memory_noop(shape: list[int], perm: tuple[int, ...] | list[int]) -> bool:
    """A transpose that keeps the order of every axis longer than 1 moves no bytes."""
    moved = [axis for axis in perm if shape[axis] > 1]
    return moved == sorted(moved)


def compose_nchw_perm(perm: list[int]) -> list[int]:
    """An NCHW-domain permutation of a 4-D tensor, applied to NHWC data, giving NHWC data."""
    # numpy convention, y axis i = x axis p[i]: going NHWC -> NCHW -> perm -> NHWC composes to
    # y_nhwc axis i = x_nhwc axis NHWC_TO_NCHW[perm[NCHW_TO_NHWC[i]]].
    return [NHWC_TO_NCHW[perm[NCHW_TO_NHWC[i]]] for i in range(4)]


# Ops that need their 4-D tensors in PyTorch's order (their axes are not an image's).
PLAIN = {"matmul", "softmax", "log_softmax", "layer_norm", "linear"}


def plain_tensors(graph: Graph) -> set[str]:
    """The 4-D activations the TFLite file keeps in the IR's order. 4-D tensors joined by ops
    that keep a layout form one group, stored one way: in PyTorch's order when an op of
    :data:`PLAIN` touches the group and no image op does, NHWC otherwise (then the writer
    refuses the PLAIN op rather than compute it over the wrong axes)."""

    def four_d(name: str) -> bool:
        tensor = graph.tensors.get(name)
        return tensor is not None and tensor.data is None and len(tensor.shape) == 4

    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in graph.nodes:
        names = [name for name in [*node.inputs, *node.outputs] if four_d(name)]
        if node.op in SAME_LAYOUT:
            for name in names[1:]:
                parent[find(name)] = find(names[0])
    touched = {find(name) for node in graph.nodes if node.op in PLAIN for name in [*node.inputs, *node.outputs] if four_d(name)}
    images = {find(name) for node in graph.nodes if node.op in SPATIAL for name in [*node.inputs, *node.outputs] if four_d(name)}
    plain_groups = touched - images
    return {name for name in graph.activations() if four_d(name) and find(name) in plain_groups}


def needs_plain(graph: Graph, node: Node) -> str | None:
    """Why a node of :data:`PLAIN` cannot be written: its 4-D tensors share a layout group with
    an image's, so they are NHWC and its last axis would be the channels."""
    names = [name for name in [*node.inputs, *node.outputs] if name in graph.tensors and graph.tensors[name].data is None]
    if any(len(graph.tensors[name].shape) == 4 for name in names) and not {
        n for n in names if len(graph.tensors[n].shape) == 4
    } <= plain_tensors(graph):
        return f"{node.op} {node.name} over the last axis of a tensor joined to an image (transpose it to [batch, ..., features] first)"
    return None


def transpose_perm(perm: list[int], in_nhwc: bool, out_nhwc: bool) -> list[int]:
    """The TFLite permutation for an IR (NCHW-order) permutation of a 4-D tensor, each side
    stored NHWC or in the IR's order."""
    out_axes = NCHW_TO_NHWC if out_nhwc else tuple(range(4))
    position = (lambda axis: NCHW_TO_NHWC.index(axis)) if in_nhwc else (lambda axis: axis)
    return [position(perm[out_axes[j]]) for j in range(4)]
