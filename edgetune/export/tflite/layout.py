"""NCHW (the IR, PyTorch) to NHWC (TFLite) layout."""

from __future__ import annotations

import numpy as np

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
