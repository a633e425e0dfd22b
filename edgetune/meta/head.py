"""An N-way head for few-shot tasks.

The model's last conv or linear layer becomes an N-way classifier whose N rows (and biases)
all start equal: the mean of the rows it had. An initialization that gives every class the
same row cannot depend on which class an episode calls 0, so the same meta-learned start
serves any labelling of any new classes (the shared head vector of UNICORN-MAML: Ye and Chao,
"How to Train Your MAML to Excel in Few-Shot Classification", ICLR 2022). ``tie_rows`` puts
the rows back to their mean after each meta-update, which keeps it so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir import quant as params
from edgetune.ir.graph import ACTIVATION_OPS, WEIGHTED_OPS, Graph, Node, QParams

# Ops between the head and the model's output that keep the classes where they are.
_PASSTHROUGH = ACTIVATION_OPS | {"reshape", "softmax"}


def head_node(graph: Graph) -> Node:
    """The last conv or linear layer, when its output reaches the model's output through
    reshapes and elementwise ops only."""
    layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    if not layers:
        raise InputError("the model has no conv or linear layer to classify with", "give a classifier")
    head = layers[-1]
    for node in _path(graph, head):
        if node.op not in _PASSTHROUGH:
            raise InputError(
                f"the model's last layer {head.name} reaches its output through {node.op} ({node.name})",
                "give a classifier whose last conv or linear layer produces its output",
            )
    return head


def _path(graph: Graph, head: Node) -> list[Node]:
    consumers = graph.consumers()
    path, tensor = [], head.outputs[0]
    while tensor not in graph.outputs:
        after = consumers.get(tensor, [])
        if len(after) != 1:
            raise InputError(f"the output of {head.name} feeds {len(after)} ops", "give a classifier whose last layer produces its output")
        path.append(after[0])
        tensor = after[0].outputs[0]
    return path


def set_way(graph: Graph, way: int) -> dict[str, Any]:
    """Give ``graph`` an ``way``-class head with equal rows (in place); the report block."""
    head = head_node(graph)
    weight = graph.const(head.inputs[1])
    classes = weight.shape[0]
    mean = weight.mean(0, keepdims=True)
    graph.tensors[head.inputs[1]].data = np.repeat(mean, way, 0).astype(np.float32)
    graph.tensors[head.inputs[1]].qdata = None
    graph.tensors[head.inputs[1]].shape = (way, *weight.shape[1:])
    if len(head.inputs) > 2 and head.inputs[2]:
        bias = graph.const(head.inputs[2])
        graph.tensors[head.inputs[2]].data = np.full(way, bias.mean(), np.float32)
        graph.tensors[head.inputs[2]].qdata = None
        graph.tensors[head.inputs[2]].shape = (way,)
    _quant_params(graph, head, way)
    for node in [head, *_path(graph, head)]:
        _resize(graph, node, classes, way)
    graph.meta["head"] = {"layer": head.name, "classes": way}
    return {"layer": head.name, "classes_before": classes, "classes": way}


def _quant_params(graph: Graph, head: Node, way: int) -> None:
    """A calibrated head keeps one weight scale for every row: the widest it had, so that the
    rows can grow in adaptation as far as the old ones reached."""
    q = graph.tensors[head.inputs[1]].quant
    if q is None:
        return
    wide = QParams(
        np.full(way if q.axis is not None else 1, q.scale.max(), np.float32), np.zeros(way if q.axis is not None else 1), q.dtype, q.axis
    )
    graph.tensors[head.inputs[1]].quant = wide
    x = graph.tensors[head.inputs[0]].quant
    if len(head.inputs) > 2 and head.inputs[2] and x is not None:
        graph.tensors[head.inputs[2]].quant = params.bias_params(x, wide)


def _resize(graph: Graph, node: Node, classes: int, way: int) -> None:
    tensor = graph.tensors[node.outputs[0]]
    shape = list(tensor.shape)
    axis = next((i for i in range(1, len(shape)) if shape[i] == classes), None)
    if axis is None:
        raise InputError(f"{node.name} does not carry the {classes} classes on an axis", "give a classifier with a plain output")
    shape[axis] = way
    tensor.shape = tuple(shape)
    if node.op == "reshape":
        target = list(node.attrs["shape"])
        target[target.index(classes)] = way
        node.attrs["shape"] = target


def tie_rows(values: dict[str, Any], weight: str, bias: str | None) -> None:
    """Set every row of the head (a torch tensor in ``values``) to their mean, in place."""
    import torch

    with torch.no_grad():
        values[weight].copy_(values[weight].mean(0, keepdim=True).expand_as(values[weight]))
        if bias is not None:
            values[bias].fill_(float(values[bias].mean()))
