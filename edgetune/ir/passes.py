"""Graph simplification passes, run in the order of :data:`PASSES`.

Each pass rewrites the graph in place and keeps its meaning in float arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import ACTIVATION_OPS, WEIGHTED_OPS, Graph, Node, Tensor

FUSABLE_PRODUCERS = {"conv2d", "conv_transpose2d", "linear", "add", "sub", "mul"}
FUSABLE_ACTIVATIONS = {"relu", "relu6"}


def _single_consumer(graph: Graph, tensor: str) -> Node | None:
    users = graph.consumers().get(tensor, [])
    if len(users) != 1 or tensor in graph.outputs:
        return None
    return users[0]


def _set_const(graph: Graph, name: str, data: np.ndarray) -> str:
    graph.tensors[name] = Tensor(name, tuple(data.shape), data.astype(np.float32))
    return name


def _bn_affine(graph: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm as y = x * scale + shift per channel."""
    _, mean_name, var_name, weight_name, bias_name = bn.inputs
    mean, var = graph.const(mean_name), graph.const(var_name)
    gamma = graph.const(weight_name) if weight_name else np.ones_like(mean)
    beta = graph.const(bias_name) if bias_name else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + np.float32(bn.attrs["eps"]))
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def fold_batchnorm(graph: Graph) -> None:
    """Fold BatchNorm into the conv or linear that feeds it alone; others become depthwise 1x1 convs."""
    producers = graph.producers()
    for bn in [n for n in graph.nodes if n.op == "batch_norm"]:
        scale, shift = _bn_affine(graph, bn)
        source = producers.get(bn.inputs[0])
        if source is not None and source.op in WEIGHTED_OPS and _single_consumer(graph, bn.inputs[0]) is bn:
            weight = graph.const(source.inputs[1])
            bias = graph.const(source.inputs[2]) if len(source.inputs) > 2 else np.zeros(weight.shape[0], np.float32)
            shape = (-1,) + (1,) * (weight.ndim - 1)
            source.inputs[1] = _set_const(graph, f"{source.name}.weight", weight * scale.reshape(shape))
            bias_name = _set_const(graph, f"{source.name}.bias", bias * scale + shift)
            source.inputs[2:] = [bias_name]
            source.attrs["batchnorm"] = True  # its output is normalized: pruning may re-estimate it
            graph.rename_input(bn.outputs[0], source.outputs[0])
            graph.nodes.remove(bn)
            continue
        rank = len(graph.tensors[bn.inputs[0]].shape)
        if rank in (2, 3):
            _batchnorm_as_scale_and_shift(graph, bn, scale, shift)
            continue
        if rank != 4:
            raise InputError(
                f"BatchNorm {bn.name} on a rank-{rank} tensor not fed by a linear layer",
                "place BatchNorm right after a conv or linear layer",
            )
        channels = scale.size
        bn.op = "conv2d"
        bn.inputs = [
            bn.inputs[0],
            _set_const(graph, f"{bn.name}.weight", scale.reshape(channels, 1, 1, 1)),
            _set_const(graph, f"{bn.name}.bias", shift),
        ]
        bn.attrs = {"stride": [1, 1], "pads": [0, 0, 0, 0], "dilation": [1, 1], "groups": channels, "batchnorm": True}
    graph.remove_unused()


def _batchnorm_as_scale_and_shift(graph: Graph, bn: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """A BatchNorm1d on [N, C] or [N, C, L] that no layer feeds alone (after a causal crop, say):
    a multiply and an add by per-channel constants, in place of the BatchNorm."""
    rank = len(graph.tensors[bn.inputs[0]].shape)
    shape = (-1,) + (1,) * (rank - 2)
    scaled = f"{bn.outputs[0]}_scaled"
    graph.tensors[scaled] = Tensor(scaled, graph.tensors[bn.outputs[0]].shape)
    add = Node("add", f"{bn.name}.shift", [scaled, _set_const(graph, f"{bn.name}.shift", shift.reshape(shape))], list(bn.outputs), {})
    bn.op, bn.outputs, bn.attrs = "mul", [scaled], {}
    bn.inputs = [bn.inputs[0], _set_const(graph, f"{bn.name}.scale", scale.reshape(shape))]
    graph.nodes.insert(graph.nodes.index(bn) + 1, add)


def fold_zero_pad(graph: Graph) -> None:
    """Fold a spatial zero pad into the convolutions that read it (TF "SAME" ports pad explicitly)."""
    consumers = graph.consumers()
    for pad in [n for n in graph.nodes if n.op == "pad"]:
        pairs = pad.attrs["pads"]
        users = consumers.get(pad.outputs[0], [])
        spatial_only = len(pairs) == 4 and pairs[0] == [0, 0] and pairs[1] == [0, 0]
        if pad.attrs["value"] != 0.0 or not spatial_only or not users or pad.outputs[0] in graph.outputs:
            continue
        if any(u.op != "conv2d" or u.inputs[0] != pad.outputs[0] for u in users):
            continue
        for conv in users:
            top, left, bottom, right = conv.attrs["pads"]
            conv.attrs["pads"] = [top + pairs[2][0], left + pairs[3][0], bottom + pairs[2][1], right + pairs[3][1]]
            conv.inputs[0] = pad.inputs[0]
        graph.nodes.remove(pad)
    graph.remove_unused()


def fuse_activations(graph: Graph) -> None:
    """Fold ReLU and ReLU6 into the conv, linear or elementwise op that feeds them alone."""
    producers = graph.producers()
    for act in [n for n in graph.nodes if n.op in FUSABLE_ACTIVATIONS]:
        source = producers.get(act.inputs[0])
        if source is None or source.op not in FUSABLE_PRODUCERS or source.act != "none":
            continue
        if _single_consumer(graph, act.inputs[0]) is not act:
            continue
        source.attrs["act"] = act.op
        del graph.tensors[source.outputs[0]]
        source.outputs = list(act.outputs)
        graph.nodes.remove(act)
        producers = graph.producers()


def clamps_to_activations(graph: Graph) -> None:
    """A clamp to [0, inf) or [0, 6] is a ReLU or ReLU6."""
    for node in graph.nodes:
        if node.op == "clamp" and node.attrs.get("min") == 0.0:
            if node.attrs.get("max") is None:
                node.op, node.attrs = "relu", {}
            elif node.attrs.get("max") == 6.0:
                node.op, node.attrs = "relu6", {}


# Ops that treat every element alike (or per channel, on axis 1), whatever the tensor's rank.
POINTWISE = ACTIVATION_OPS | {"batch_norm", "add", "sub", "mul"}


def _squeezes_height(graph: Graph, node: Node | None) -> bool:
    """A reshape [N, C, 1, L] -> [N, C, L]: the way back from a 1-D layer lowered as a 2-D one."""
    if node is None or node.op != "reshape":
        return False
    before, after = graph.tensors[node.inputs[0]].shape, graph.tensors[node.outputs[0]].shape
    return len(before) == 4 and before[2] == 1 and tuple(after) == (before[0], before[1], before[3])


def _free_name(graph: Graph, base: str) -> str:
    taken = set(graph.tensors) | {n.name for n in graph.nodes}
    name, suffix = base, 2
    while name in taken:
        name, suffix = f"{base}#{suffix}", suffix + 1
    return name


def _lift_across_reshape(graph: Graph, node: Node, producers: dict[str, Node]) -> bool:
    """Run a pointwise ``node`` before the reshapes [N, C, 1, L] -> [N, C, L] that feed it, when
    they all start from one shape, and reshape its result instead. Scalars only as
    constant operands (a per-channel constant would broadcast differently at the other rank)."""
    acts = [name for name in node.inputs[: 1 if node.op == "batch_norm" else None] if graph.tensors[name].data is None]
    constants = [graph.tensors[name].data for name in node.inputs if name not in acts and name]
    if node.op != "batch_norm" and any(c is not None and c.size > 1 for c in constants):
        return False
    feeding = {name: producers.get(name) for name in acts}
    if not acts or not all(_squeezes_height(graph, r) for r in feeding.values()):
        return False
    shapes = {graph.tensors[r.inputs[0]].shape for r in feeding.values() if r is not None}
    if len(shapes) != 1:
        return False
    out = node.outputs[0]
    squeezed = _free_name(graph, f"{node.name}.reshape")
    graph.tensors[squeezed] = Tensor(squeezed, graph.tensors[out].shape)
    graph.rename_input(out, squeezed)  # the op's readers (and the graph's outputs) now read the reshape
    graph.tensors[out].shape = shapes.pop()
    node.inputs = [r.inputs[0] if (r := feeding.get(name)) is not None else name for name in node.inputs]
    back = Node("reshape", squeezed, [out], [squeezed], {"shape": list(graph.tensors[squeezed].shape[1:])})
    graph.nodes.insert(graph.nodes.index(node) + 1, back)
    return True


def _merge_reshapes(graph: Graph) -> bool:
    """reshape(reshape(x)) -> reshape(x), and a reshape back to x's own shape -> x."""
    producers = graph.producers()
    for node in graph.nodes:
        first = producers.get(node.inputs[0])
        if node.op != "reshape" or first is None or first.op != "reshape":
            continue
        node.inputs = [first.inputs[0]]
        if graph.tensors[node.outputs[0]].shape == graph.tensors[first.inputs[0]].shape and node.outputs[0] not in graph.outputs:
            graph.rename_input(node.outputs[0], first.inputs[0])
            graph.nodes.remove(node)
        return True
    return False


def drop_dead(graph: Graph) -> None:
    """Remove nodes whose outputs nothing reads (a sequence output no one uses, a bypassed reshape)."""
    while True:
        used = set(graph.outputs) | {name for node in graph.nodes for name in node.inputs}
        dead = [node for node in graph.nodes if not any(out in used for out in node.outputs)]
        if not dead:
            break
        for node in dead:
            graph.nodes.remove(node)
    graph.remove_unused()


def drop_unit_reshapes(graph: Graph) -> None:
    """Keep chains of 1-D layers (lowered as 2-D ops between unit reshapes) in 4-D: move
    pointwise ops and BatchNorm across the reshapes, then cancel back-to-back pairs. TFLite
    keeps 4-D tensors in NHWC and others in the IR's order, so each reshape left between two
    2-D ops would cost two transposes."""
    changed = True
    while changed:
        producers = graph.producers()
        changed = any(_lift_across_reshape(graph, node, producers) for node in list(graph.nodes) if node.op in POINTWISE)
        changed = _merge_reshapes(graph) or changed
        drop_dead(graph)


PASSES: list[Callable[[Graph], None]] = [drop_unit_reshapes, fold_batchnorm, fold_zero_pad, clamps_to_activations, fuse_activations]


def simplify(graph: Graph) -> None:
    for run in PASSES:
        run(graph)
