"""Rewrite op patterns that exporters spell out into the single ONNX op the importers know.

Exporters write some functions as their formula: PyTorch's TorchScript exporter and
tf2onnx spell GELU before opset 20 as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (the factors in
either order, ``/ sqrt(2)`` or ``* (1 / sqrt(2))``). Each matched pattern is replaced by the
op (``Gelu``) with the same input and output names, so shapes and names stay as exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SQRT2 = float(np.sqrt(2.0))


def _scalar(constants: dict[str, np.ndarray], name: str) -> float | None:
    value = constants.get(name)
    if value is None or value.size != 1:
        return None
    return float(np.asarray(value, np.float64).reshape(-1)[0])


def _other(proto: Any, name: str) -> str | None:
    """The other operand of a binary ``proto`` that reads ``name``."""
    if len(proto.input) != 2 or name not in proto.input:
        return None
    return str(proto.input[1] if proto.input[0] == name else proto.input[0])


class _Uses:
    def __init__(self, nodes: list[Any]) -> None:
        self.readers: dict[str, list[Any]] = {}
        for proto in nodes:
            for name in proto.input:
                self.readers.setdefault(name, []).append(proto)

    def only(self, name: str, op_type: str) -> Any | None:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def _close(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= 1e-4 * abs(expected)


def _gelu_at(erf: Any, uses: _Uses, constants: dict[str, np.ndarray], producers: dict[str, Any]) -> tuple[str, str, list[Any]] | None:
    """(x, output, the nodes to drop) when ``erf`` is the middle of an erf GELU."""
    scaled = producers.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul") or scaled.input[1] not in constants:
        return None
    x = str(scaled.input[0])
    factor = _scalar(constants, scaled.input[1])
    if not (_close(factor, SQRT2) if scaled.op_type == "Div" else _close(factor, 1 / SQRT2)):
        return None
    plus = uses.only(erf.output[0], "Add")
    if plus is None or not _close(_scalar(constants, _other(plus, erf.output[0]) or ""), 1.0):
        return None
    first = uses.only(plus.output[0], "Mul")
    if first is None:
        return None
    partner = _other(first, plus.output[0]) or ""
    if partner == x:  # (x * (1 + erf)) * 0.5
        last = uses.only(first.output[0], "Mul")
        if last is None or not _close(_scalar(constants, _other(last, first.output[0]) or ""), 0.5):
            return None
        return x, str(last.output[0]), [scaled, erf, plus, first, last]
    half = producers.get(partner)  # (x * 0.5) * (1 + erf)
    if half is None or half.op_type != "Mul" or _other(half, x) is None or not _close(_scalar(constants, _other(half, x) or ""), 0.5):
        return None
    return x, str(first.output[0]), [scaled, erf, plus, first, half]


def fuse_gelu(model: Any, constants: dict[str, np.ndarray]) -> int:
    """Replace every erf GELU in ``model`` by a ``Gelu`` node; how many were replaced."""
    from onnx import helper

    nodes = list(model.graph.node)
    uses = _Uses(nodes)
    producers = {name: proto for proto in nodes for name in proto.output}
    dropped: set[int] = set()
    replacements: dict[int, Any] = {}
    for proto in nodes:
        if proto.op_type != "Erf":
            continue
        found = _gelu_at(proto, uses, constants, producers)
        if found is None:
            continue
        x, out, parts = found
        if any(len(uses.readers.get(p.output[0], [])) > 1 for p in parts if str(p.output[0]) not in (out, x)):
            continue  # an intermediate value is read elsewhere too
        positions = sorted(nodes.index(p) for p in parts)
        replacements[positions[-1]] = helper.make_node("Gelu", [x], [out], name=f"{proto.name or out}_gelu")
        dropped.update(positions)
    if not replacements:
        return 0
    rewritten = [replacements.get(i, proto) for i, proto in enumerate(nodes) if i not in dropped or i in replacements]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return len(replacements)
