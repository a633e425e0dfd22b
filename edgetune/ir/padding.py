"""TensorFlow "SAME" padding, shared by the reference models and the TFLite writer."""

from __future__ import annotations

import math


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis.

    TF pads so that ``out = ceil(size / stride)`` and puts the odd pixel at the end.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
