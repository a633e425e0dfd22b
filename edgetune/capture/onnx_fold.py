"""Fold an ONNX file's constant subgraphs before import.

Exporters compute pads, slice bounds, reshape targets and scales at run time from ``Shape``
(PyTorch's ``F.pad`` writes ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast to
build a Pad's pads; ``chunk`` divides a Shape by the chunk count; attention takes its scale
from a Shape). With the input's shape fixed (a batch of one) every such node depends only on
constants: each is evaluated once, by ONNX's reference implementation of its op, and its
outputs become constants the importers read. Nodes that read an activation's data are left
for the importers.

A constant computed from the batch size is computed for a batch of one: the importers use
ONNX shape inference's output shapes, which hold the batch axis apart, not those values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Ops whose value is known once their inputs' shapes are; they never read the data
SHAPE_READERS = {"Shape", "Size"}
# A folded value larger than this (elements) is left to the importers, which refuse it: a
# file cannot make the import allocate gigabytes (ConstantOfShape of [2**40])
LARGEST = 1 << 24


def _shape_value(proto: Any, shape: tuple[int, ...]) -> np.ndarray:
    if proto.op_type == "Size":
        return np.asarray(int(np.prod(shape)), np.int64)
    attrs = {a.name: a.i for a in proto.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.asarray(shape[start:end], np.int64)


def _small(proto: Any, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether ``proto`` may be folded: no subgraph, and outputs of known, bounded size."""
    if proto.op_type in ("If", "Loop", "Scan") or proto.domain not in ("", "ai.onnx"):
        return False
    return all(name in shapes and int(np.prod(shapes[name], dtype=np.float64)) <= LARGEST for name in proto.output if name)


def _evaluate(proto: Any, values: list[np.ndarray | None], opsets: Any) -> list[np.ndarray] | None:
    """``proto``'s outputs by ONNX's reference evaluator, or None when it cannot run it."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(proto.input)]
    node = helper.make_node(proto.op_type, names, [f"out{i}" for i in range(len(proto.output))], domain=proto.domain)
    node.attribute.extend(proto.attribute)
    feeds = {name: value for name, value in zip(names, values) if name}
    try:
        evaluator = ReferenceEvaluator(node, opsets=opsets)
        results = evaluator.run(None, feeds)
    except Exception:  # an op the reference lacks, or a malformed node: left to the importers
        return None
    return [np.asarray(value) for value in results]


def fold_constants(model: Any, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> set[int]:
    """Evaluate every node of ``model`` that reads only constants (and the shapes of known
    tensors) into ``constants``; the positions of the nodes folded."""
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    folded: set[int] = set()
    for index, proto in enumerate(model.graph.node):
        if proto.op_type == "Constant" and proto.output[0] in constants:
            folded.add(index)
            continue
        if proto.op_type in SHAPE_READERS and proto.input[0] in shapes:
            constants[proto.output[0]] = _shape_value(proto, shapes[proto.input[0]])
        elif all(not name or name in constants for name in proto.input) and _small(proto, shapes):
            outputs = _evaluate(proto, [constants[name] if name else None for name in proto.input], opsets)
            if outputs is None:
                continue
            for name, value in zip(proto.output, outputs):
                if name:
                    constants[name] = value
        else:
            continue
        for name in proto.output:
            if name in constants:
                shapes[name] = tuple(constants[name].shape)
        folded.add(index)
    return folded


def folded_model(model: Any, constants: dict[str, np.ndarray], folded: set[int]) -> Any:
    """``model`` with its folded nodes replaced by the initializers they computed, and its
    shapes inferred again: a Slice, Pad or Reshape whose operands were computed now has a
    known output shape."""
    import onnx
    from onnx import numpy_helper

    kept = [proto for index, proto in enumerate(model.graph.node) if index not in folded]
    read = {name for proto in kept for name in proto.input} | {value.name for value in model.graph.output}
    present = {tensor.name for tensor in model.graph.initializer}
    graph = model.graph
    new_inits = [numpy_helper.from_array(np.asarray(constants[name]), name) for name in sorted(read - present) if name in constants]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
