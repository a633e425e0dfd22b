"""GRU and LSTM in an ``.onnx`` input, unrolled like the captured ones.

ONNX's recurrent ops take and give time-major tensors: X is [T, N, F] (``layout`` 0, what
PyTorch's exporter writes after transposing a batch-first input), Y is [T, D, N, H] and the
final states [D, N, H]. The IR keeps axis 0 as the batch, so those tensors are held as
sequences: their [N, F] step tensors in an array over the time and direction axes. The ops
that move those axes (Transpose, Squeeze, a Reshape that joins the directions' features,
Gather or Slice of steps, Concat of layers' states) rearrange the array and emit nothing; a
Gather of one step gives back a plain [N, F] tensor (``out[:, -1]``, ``h_n[-1]``).

Gate orders differ from PyTorch's (ONNX GRU: z, r, h; LSTM: i, o, f, c): the weights are
reordered once, then the steps are those of :mod:`edgetune.capture.recurrent` (ONNX's
equations with ``linear_before_reset=1`` are PyTorch's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.capture.onnx_import import OnnxContext, _attrs, imports
from edgetune.capture.recurrent import Cell, Steps, run_layer
from edgetune.errors import InputError
from edgetune.ir.graph import Node, Tensor
from edgetune.registry import Registry


@dataclass
class Sequence:
    """An ONNX tensor with step or direction axes. ``axes`` names its axes in order: "T"
    (steps), "D" (directions, or layers' states), "N" (batch), "F" (features); ``cells``
    holds the [N, F] IR tensors over its T and D axes, in the order they appear."""

    axes: list[str]
    cells: np.ndarray  # dtype object

    def dims(self) -> list[str]:
        return [axis for axis in self.axes if axis in "TD"]


SequenceImporter = Callable[[OnnxContext, Any, Sequence], None]
SEQUENCE_OPS: Registry[SequenceImporter] = Registry("ONNX importer of step sequences")


def sequence_of(ctx: OnnxContext, name: str) -> Sequence | None:
    found: Sequence | None = ctx.sequences.get(ctx.aliases.get(name, name))
    return found


def _publish(ctx: OnnxContext, name: str, seq: Sequence) -> None:
    """A sequence left with no step or direction axis is a plain [N, F] tensor again."""
    if seq.dims():
        ctx.sequences[name] = seq
    elif seq.axes == ["N", "F"]:
        ctx.aliases[name] = str(seq.cells.item())
    else:
        raise InputError(f"{name} puts the features before the batch axis", "read a step or a state as [batch, features]")


def _refuse(proto: Any, what: str) -> InputError:
    return InputError(
        f"{proto.op_type} {proto.name or proto.output[0]} {what}",
        "read one step (out[:, -1]) or the final state (h_n[-1]) of the recurrent layer",
    )


def import_sequence_op(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    if proto.op_type not in SEQUENCE_OPS:
        raise _refuse(proto, "reads a GRU or LSTM's whole time-major output")
    SEQUENCE_OPS[proto.op_type](ctx, proto, seq)


@SEQUENCE_OPS.register("Transpose")
def _transpose(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    axes = [seq.axes[p] for p in _attrs(proto)["perm"]]
    order = [seq.dims().index(axis) for axis in axes if axis in "TD"]
    _publish(ctx, proto.output[0], Sequence(axes, np.transpose(seq.cells, order)))


def _drop(seq: Sequence, axis: int, index: int, proto: Any) -> Sequence:
    """``seq`` without its ``axis``, at ``index`` along it."""
    label = seq.axes[axis]
    if label not in "TD":
        raise _refuse(proto, "indexes the batch or the feature axis of a step sequence")
    cells = np.take(seq.cells, index, axis=seq.dims().index(label))
    return Sequence([a for i, a in enumerate(seq.axes) if i != axis], np.asarray(cells, dtype=object))


@SEQUENCE_OPS.register("Squeeze")
def _squeeze(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    shape = ctx.shapes[proto.input[0]]
    axes = ctx.const(proto.input[1]) if len(proto.input) > 1 else _attrs(proto).get("axes")
    picked = [int(a) % len(shape) for a in np.asarray(axes).reshape(-1)] if axes is not None else [i for i, d in enumerate(shape) if d == 1]
    for axis in sorted(picked, reverse=True):
        seq = _drop(seq, axis, 0, proto)
    _publish(ctx, proto.output[0], seq)


@SEQUENCE_OPS.register("Gather")
def _gather(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    index = ctx.const(proto.input[1])
    axis = int(_attrs(proto).get("axis", 0)) % len(seq.axes)
    if index is None or index.size != 1:
        raise _refuse(proto, "gathers computed or several steps")
    picked = _drop(seq, axis, int(index.reshape(-1)[0]) % ctx.shapes[proto.input[0]][axis], proto)
    if index.ndim == 1:  # x[[t]] keeps the axis, with one step
        picked = Sequence(seq.axes, np.expand_dims(picked.cells, seq.dims().index(seq.axes[axis])))
    _publish(ctx, proto.output[0], picked)


@SEQUENCE_OPS.register("Slice")
def _slice(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    values = [ctx.const(name) if name else None for name in proto.input[1:]]
    starts, ends = values[0], values[1]
    axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(len(np.asarray(starts)))
    steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(len(np.asarray(starts)), np.int64)
    if starts is None or ends is None:
        raise _refuse(proto, "slices steps at computed positions")
    cells = seq.cells
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), np.asarray(axes).tolist(), np.asarray(steps).tolist()):
        label = seq.axes[int(axis) % len(seq.axes)]
        if label not in "TD":
            raise _refuse(proto, "slices the batch or the feature axis of a step sequence")
        where = [slice(None)] * cells.ndim
        where[seq.dims().index(label)] = slice(int(start), int(end), int(step))
        cells = cells[tuple(where)]
    _publish(ctx, proto.output[0], Sequence(seq.axes, cells))


@SEQUENCE_OPS.register("Concat")
def _concat(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    parts = [sequence_of(ctx, name) for name in proto.input]
    axis = int(_attrs(proto)["axis"]) % len(seq.axes)
    if any(part is None or part.axes != seq.axes for part in parts) or seq.axes[axis] not in "TD":
        raise _refuse(proto, "joins a step sequence with something else")
    cells = np.concatenate([part.cells for part in parts if part is not None], axis=seq.dims().index(seq.axes[axis]))
    _publish(ctx, proto.output[0], Sequence(seq.axes, cells))


@SEQUENCE_OPS.register("Reshape", "Flatten")
def _reshape(ctx: OnnxContext, proto: Any, seq: Sequence) -> None:
    """The directions' features joined ([T, N, D, H] to [T, N, D*H]), or unit axes dropped."""
    in_shape, out_shape = list(ctx.shapes[proto.input[0]]), list(ctx.shapes[proto.output[0]])
    for i in range(len(seq.axes) - 1):
        joined = in_shape[:i] + [in_shape[i] * in_shape[i + 1]] + in_shape[i + 2 :]
        if seq.axes[i : i + 2] == ["D", "F"] and joined == out_shape:
            _publish(ctx, proto.output[0], _join_directions(ctx, proto, seq, i))
            return
    kept = [i for i, d in enumerate(in_shape) if d != 1 or seq.axes[i] in "NF"]
    if [in_shape[i] for i in kept] != out_shape:
        raise _refuse(proto, f"reshapes a step sequence {in_shape} to {out_shape}")
    for axis in sorted(set(range(len(in_shape))) - set(kept), reverse=True):
        seq = _drop(seq, axis, 0, proto)
    _publish(ctx, proto.output[0], seq)


def _join_directions(ctx: OnnxContext, proto: Any, seq: Sequence, axis: int) -> Sequence:
    """One [N, D*H] concatenation per step of the D direction tensors."""
    where = seq.dims().index("D")
    moved = np.moveaxis(seq.cells, where, -1)
    joined = np.empty(moved.shape[:-1], dtype=object)
    for index in np.ndindex(*moved.shape[:-1]):
        parts = [str(name) for name in moved[index]]
        out = f"{proto.name or proto.output[0]}_join{'_'.join(map(str, index))}"
        batch = ctx.graph.tensors[parts[0]].shape[0]
        width = sum(ctx.graph.tensors[p].shape[1] for p in parts)
        ctx.graph.tensors[out] = Tensor(out, (batch, width))
        ctx.graph.nodes.append(Node("concat", out, parts, [out], {"axis": 1}))
        joined[index] = out
    return Sequence([a for i, a in enumerate(seq.axes) if i != axis], joined)


class _OnnxSteps(Steps):
    def __init__(self, ctx: OnnxContext, base: str, batch: int) -> None:
        self.ctx, self.base, self.batch = ctx, base, batch

    def op(self, op: str, suffix: str, inputs: list[str], width: int, **attrs: Any) -> str:
        out = f"{self.base}_{suffix}"
        self.ctx.graph.tensors[out] = Tensor(out, (self.batch, width))
        self.ctx.graph.nodes.append(Node(op, out, inputs, [out], dict(attrs)))
        return out

    def constant(self, name: str, data: np.ndarray) -> str:
        return self.ctx.add_const(f"{self.base}.{name}", data)


def _slice_steps(ctx: OnnxContext, source: str, base: str) -> np.ndarray:
    """The [N, F] steps of a batch-first [N, T, F] tensor: a slice and a reshape each."""
    batch, steps, features = (int(d) for d in ctx.graph.tensors[source].shape)
    s = _OnnxSteps(ctx, base, batch)
    cells = np.empty(steps, dtype=object)
    for t in range(steps):
        step = f"{base}_x{t}_3d"
        ctx.graph.tensors[step] = Tensor(step, (batch, 1, features))
        ctx.graph.nodes.append(Node("slice", step, [source], [step], {"axis": 1, "start": t, "end": t + 1, "step": 1}))
        cells[t] = s.op("reshape", f"x{t}", [step], features, shape=[features])
    return cells


def steps_of(ctx: OnnxContext, proto: Any) -> bool:
    """A batch-first [N, T, F] activation made time-major (``Transpose`` perm [1, 0, 2]), as
    PyTorch's exporter feeds a recurrent layer: its steps."""
    source = ctx.name(proto.input[0])
    tensor = ctx.graph.tensors.get(source)
    if any(reader not in ("GRU", "LSTM") for reader in ctx.readers.get(proto.output[0], ["none"])):
        return False  # attention's time-major transposes are not steps
    if list(_attrs(proto)["perm"]) != [1, 0, 2] or tensor is None or tensor.data is not None or len(tensor.shape) != 3:
        return False
    ctx.sequences[proto.output[0]] = Sequence(["T", "N", "F"], _slice_steps(ctx, source, proto.name or proto.output[0]))
    return True


# ONNX's gate order -> PyTorch's, as row blocks of the weights
GATES = {"GRU": [1, 0, 2], "LSTM": [0, 2, 3, 1]}


def _reordered(weight: np.ndarray, kind: str, hidden: int) -> np.ndarray:
    blocks = [weight[i * hidden : (i + 1) * hidden] for i in range(len(GATES[kind]))]
    return np.concatenate([blocks[i] for i in GATES[kind]]).astype(np.float32)


def _check_attributes(ctx: OnnxContext, proto: Any, a: dict[str, Any]) -> None:
    defaults = {"GRU": [b"Sigmoid", b"Tanh"], "LSTM": [b"Sigmoid", b"Tanh", b"Tanh"]}[proto.op_type]
    problems = []
    if a.get("activations") not in (None, defaults, defaults * 2):
        problems.append("other activations than the defaults")
    if a.get("clip") is not None:
        problems.append("a clip")
    if proto.op_type == "GRU" and a.get("linear_before_reset", 0) != 1:
        problems.append("linear_before_reset=0 (PyTorch and Keras' reset_after write 1)")
    if a.get("input_forget", 0):
        problems.append("input_forget")
    inputs = list(proto.input) + [""] * 8
    if inputs[4]:
        problems.append("sequence_lens")
    if proto.op_type == "LSTM" and inputs[7]:
        problems.append("peepholes")
    for state in (inputs[5], inputs[6] if proto.op_type == "LSTM" else ""):
        value = ctx.const(state) if state else np.zeros(1)
        if value is None or np.any(value):
            problems.append("an initial state other than zeros")
    if problems:
        raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} uses {', '.join(problems)}", "export it with the defaults")


def _step_inputs(ctx: OnnxContext, proto: Any, layout: int) -> list[str]:
    seq = sequence_of(ctx, proto.input[0])
    if seq is not None and seq.axes == (["T", "N", "F"] if layout == 0 else ["N", "T", "F"]):
        return [str(name) for name in seq.cells]
    source = ctx.name(proto.input[0])
    if seq is None and layout == 1 and len(ctx.graph.tensors[source].shape) == 3:
        return [str(name) for name in _slice_steps(ctx, source, f"{proto.name or proto.output[0]}_in")]
    raise InputError(
        f"{proto.op_type} {proto.name or proto.output[0]} reads a time-major model input",
        "export the model with a [batch, steps, features] input (batch_first=True)",
    )


@imports("GRU", "LSTM")
def recurrent(ctx: OnnxContext, proto: Any) -> None:
    a = _attrs(proto)
    _check_attributes(ctx, proto, a)
    layout, hidden = int(a.get("layout", 0)), int(a["hidden_size"])
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    inputs = _step_inputs(ctx, proto, layout)
    weights = [ctx.const(name) for name in proto.input[1:3]]
    if weights[0] is None or weights[1] is None:
        raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} has computed weights", "export them as initializers")
    w, r = weights[0], weights[1]
    gates = len(GATES[proto.op_type])
    bias = ctx.const(proto.input[3]) if len(proto.input) > 3 and proto.input[3] else np.zeros((w.shape[0], 2 * gates * hidden))
    if bias is None:
        raise InputError(f"{proto.op_type} {proto.name or proto.output[0]} has a computed bias", "export it as an initializer")
    base = proto.name or proto.output[0]
    s = _OnnxSteps(ctx, base, int(ctx.graph.tensors[inputs[0]].shape[0]))
    runs = []
    for d in range(w.shape[0]):
        cell = Cell(
            proto.op_type.lower(),
            ctx.add_const(f"{base}.w{d}", _reordered(w[d], proto.op_type, hidden)),
            ctx.add_const(f"{base}.r{d}", _reordered(r[d], proto.op_type, hidden)),
            _reordered(bias[d, : gates * hidden], proto.op_type, hidden),
            _reordered(bias[d, gates * hidden :], proto.op_type, hidden),
            hidden,
            f"d{d}",
        )
        runs.append(run_layer(s, cell, inputs, reverse=direction == "reverse" or d == 1))
    steps = np.array([[run[0][t] for run in runs] for t in range(len(inputs))], dtype=object)
    outputs = [
        Sequence(["T", "D", "N", "F"] if layout == 0 else ["N", "T", "D", "F"], steps),
        Sequence(["D", "N", "F"] if layout == 0 else ["N", "D", "F"], np.array([run[1] for run in runs], dtype=object)),
        Sequence(["D", "N", "F"] if layout == 0 else ["N", "D", "F"], np.array([run[2] for run in runs], dtype=object)),
    ]
    for name, seq in zip(proto.output, outputs):
        if name:
            ctx.sequences[name] = seq
