"""The ``channels`` op: channels of the last axis gathered and scaled (quantize/stream.py's
outlier split). Its usual form keeps every channel in order and appends copies of a few,
each copy scaled like its source; the writers then write a multiply, a small gather and a
concatenation instead of a gather of the whole tensor (ONNX Runtime's Gather on the last
axis costs about a quarter of a millisecond on a 128 x 1536 tensor; a concatenation is a copy)."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.ir.graph import Node


@dataclass(frozen=True)
class Appended:
    """``x * head``, then the channels ``extra`` of that appended (each copy scaled like its source)."""

    head: list[float] | None  # None: no scaling
    extra: list[int]


def appended(node: Node, width: int) -> Appended | None:
    """The usual form of a ``channels`` node reading ``width`` channels, or None when it has another."""
    indices, factors = node.attrs.get("indices"), node.attrs.get("factors")
    if indices is None or list(indices[:width]) != list(range(width)):
        return None
    extra = [int(i) for i in indices[width:]]
    if factors is None:
        return Appended(None, extra)
    head = [float(f) for f in factors[:width]]
    if any(float(factors[width + k]) != head[source] for k, source in enumerate(extra)):
        return None
    return Appended(None if all(f == 1.0 for f in head) else head, extra)
