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


def _rewrite(model: Any, nodes: list[Any], replacements: dict[int, Any], dropped: set[int]) -> int:
    """``model``'s nodes with each pattern's nodes (``dropped``) replaced by its one node, placed
    where the pattern's last node was; how many patterns were replaced."""
    if not replacements:
        return 0
    rewritten = [replacements.get(i, proto) for i, proto in enumerate(nodes) if i not in dropped or i in replacements]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return len(replacements)


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
    return _rewrite(model, nodes, replacements, dropped)


def _last_axis_mean(proto: Any, constants: dict[str, np.ndarray], rank: int | None) -> bool:
    """A ReduceMean over the last axis only, keeping it."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
    axes = attrs.get("axes")
    if axes is None and len(proto.input) > 1:
        axes = constants.get(proto.input[1])
    if axes is None or not attrs.get("keepdims", 1):
        return False
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _layer_norm_at(
    mean: Any, uses: _Uses, constants: dict[str, np.ndarray], rank: int | None
) -> tuple[list[str], str, float, list[Any]] | None:
    """([x, gamma, beta], output, eps, the nodes to drop) when ``mean`` starts a LayerNorm
    spelt out: ``d = x - mean(x); d / sqrt(mean(d ** 2) + eps) * gamma + beta``."""
    x = str(mean.input[0])
    if not _last_axis_mean(mean, constants, rank):
        return None
    centre = uses.only(mean.output[0], "Sub")
    if centre is None or centre.input[0] != x or centre.input[1] != mean.output[0]:
        return None
    readers = {p.op_type: p for p in uses.readers.get(centre.output[0], [])}
    square, divide = readers.get("Pow"), readers.get("Div")
    if len(uses.readers.get(centre.output[0], [])) != 2 or square is None or divide is None:
        return None
    if not _close(_scalar(constants, square.input[1]), 2.0) or divide.input[0] != centre.output[0]:
        return None
    variance = uses.only(square.output[0], "ReduceMean")
    if variance is None or not _last_axis_mean(variance, constants, rank):
        return None
    shifted = uses.only(variance.output[0], "Add")
    eps = _scalar(constants, _other(shifted, variance.output[0]) or "") if shifted is not None else None
    root = uses.only(shifted.output[0], "Sqrt") if shifted is not None else None
    if eps is None or root is None or divide.input[1] != root.output[0]:
        return None
    parts, out, gamma, beta = [mean, centre, square, variance, shifted, root, divide], str(divide.output[0]), "", ""
    scale = uses.only(out, "Mul")
    if scale is not None and (_other(scale, out) or "") in constants:
        gamma, out = str(_other(scale, out)), str(scale.output[0])
        parts.append(scale)
        offset = uses.only(out, "Add")
        if offset is not None and (_other(offset, out) or "") in constants:
            beta, out = str(_other(offset, out)), str(offset.output[0])
            parts.append(offset)
    return [x, gamma, beta], out, eps, parts


def fuse_layer_norm(model: Any, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """Replace every LayerNorm that an exporter spelt out (opsets before 17 have no
    LayerNormalization) by one; how many were replaced. Without an affine part, the scale is
    ones and the offset zeros."""
    from onnx import helper

    nodes = list(model.graph.node)
    uses = _Uses(nodes)
    dropped: set[int] = set()
    replacements: dict[int, Any] = {}
    for proto in nodes:
        if proto.op_type != "ReduceMean":
            continue
        shape = shapes.get(proto.input[0])
        found = _layer_norm_at(proto, uses, constants, len(shape) if shape is not None else None)
        if found is None or shape is None:
            continue
        (x, gamma, beta), out, eps, parts = found
        if any(len(uses.readers.get(p.output[0], [])) > 1 for p in parts if p is not parts[1] and str(p.output[0]) != out):
            continue  # an intermediate value is read elsewhere too
        width = shape[-1]
        for role, name, fill in (("gamma", gamma, 1.0), ("beta", beta, 0.0)):
            value = constants.get(name) if name else None
            if value is None or value.size not in (1, width):
                value = np.full(width, fill, np.float32) if not name else None
            if value is None:
                break
            constants[f"{out}_{role}"] = np.broadcast_to(value.reshape(-1), (width,)).astype(np.float32)
        else:
            positions = sorted(nodes.index(p) for p in parts)
            inputs = [x, f"{out}_gamma", f"{out}_beta"]
            replacements[positions[-1]] = helper.make_node("LayerNormalization", inputs, [out], name=f"{out}_layer_norm", epsilon=eps)
            dropped.update(positions)
    return _rewrite(model, nodes, replacements, dropped)


def batch_gather_as_reshape(model: Any, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """``flatten(mask)[b * steps + k]``, how recent transformers gather the padding mask for
    every (batch, key) pair: with the batch fixed to one for import, the indices are every
    position in order, so the Gather is the mask reshaped (the same per example at any batch
    size). It becomes a Reshape of the Flatten's input; how many were rewritten."""
    from onnx import helper

    nodes = list(model.graph.node)
    producers = {name: proto for proto in nodes for name in proto.output}
    rewritten = 0
    for index, proto in enumerate(nodes):
        if proto.op_type != "Gather" or proto.input[1] not in constants:
            continue
        flat = producers.get(proto.input[0])
        axis = next((helper.get_attribute_value(a) for a in proto.attribute if a.name == "axis"), 0)
        if flat is None or flat.op_type not in ("Flatten", "Reshape") or axis != 0:
            continue
        source_shape, out_shape = shapes.get(flat.input[0]), shapes.get(proto.output[0])
        positions = np.asarray(constants[proto.input[1]]).reshape(-1)
        if not source_shape or source_shape[0] != 1 or out_shape is None or not out_shape or out_shape[0] != 1:
            continue
        if positions.size != int(np.prod(source_shape)) or not np.array_equal(positions, np.arange(positions.size)):
            continue
        target = f"{proto.output[0]}_shape"
        constants[target] = np.asarray(out_shape, np.int64)
        model.graph.initializer.append(helper.make_tensor(target, 7, [len(out_shape)], [int(d) for d in out_shape]))
        nodes[index] = helper.make_node(
            "Reshape", [flat.input[0], target], list(proto.output), name=f"{proto.name or proto.output[0]}_reshape"
        )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten


def gemm_over_tokens(model: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    """``reshape(x, [-1, D]) -> Gemm -> reshape(y, [N, T, O])``, how edgetune's own writer (and
    some exporters) apply a linear layer to every token: one Gemm on [N, T, D] (the importer's
    linear acts on the last axis), so the batch axis is not merged with the tokens; how many
    were rewritten."""
    nodes = list(model.graph.node)
    uses = _Uses(nodes)
    producers = {name: proto for proto in nodes for name in proto.output}
    dropped: set[int] = set()
    for proto in nodes:
        if proto.op_type != "Gemm":
            continue
        flat = producers.get(proto.input[0])
        back = uses.only(proto.output[0], "Reshape")
        if flat is None or flat.op_type != "Reshape" or back is None or len(uses.readers.get(flat.output[0], [])) != 1:
            continue
        source, restored = shapes.get(flat.input[0]), shapes.get(back.output[0])
        if source is None or restored is None or len(source) < 3 or len(restored) != len(source) or restored[:-1] != source[:-1]:
            continue
        proto.input[0] = flat.input[0]
        proto.output[0] = back.output[0]
        dropped.update({nodes.index(flat), nodes.index(back)})
    if dropped:
        kept = [proto for index, proto in enumerate(nodes) if index not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return len(dropped) // 2
