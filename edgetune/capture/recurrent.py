"""GRU and LSTM, unrolled over the captured (static) sequence length.

Each step becomes ops both runtimes run in int8: fully connected layers for the input and
recurrent projections, slices for the gates, LOGISTIC and TANH, elementwise MUL, ADD and SUB.
Every step's tensors get their own calibrated int8 parameters; the steps share one weight
tensor per projection (tied, so pruning, fine-tuning and the writers see one weight) and
each has its own bias (an int8 bias grid is input scale x weight scale, which differs by
step). Gate formulas follow PyTorch's ``nn.GRU`` and ``nn.LSTM`` documentation.

The initial state must be zeros (the module's default): step 0 then needs no recurrent
projection. Layers stack, and a bidirectional layer runs a second pass from the last step
to the first and concatenates the two states per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx

from edgetune.capture.lowerings import _int
from edgetune.capture.registry import LoweringContext, lowers
from edgetune.errors import InputError

aten = torch.ops.aten


@dataclass
class Cell:
    """One direction of one layer: weights [G*H, F], [G*H, H] and biases [G*H], gates in
    PyTorch's order (GRU: r, z, n; LSTM: i, f, g, o)."""

    kind: str  # "gru" or "lstm"
    w_ih: str
    w_hh: str
    b_ih: np.ndarray
    b_hh: np.ndarray
    hidden: int
    prefix: str


class Steps:
    """Emits the IR nodes of one recurrent layer, with names unique per step: each importer
    (PyTorch capture, ONNX import) says how a node and a constant are made."""

    batch: int

    def op(self, op: str, suffix: str, inputs: list[str], width: int, **attrs: Any) -> str:
        """A node with one [batch, width] output; returns the output's name."""
        raise NotImplementedError

    def constant(self, name: str, data: np.ndarray) -> str:
        raise NotImplementedError

    def cols(self, x: str, start: int, end: int, suffix: str) -> str:
        return self.op("slice", suffix, [x], end - start, axis=1, start=start, end=end, step=1)

    def project(self, x: str, weight: str, bias: np.ndarray, suffix: str) -> str:
        bias_name = self.constant(f"{suffix}.bias", bias)
        return self.op("linear", suffix, [x, weight, bias_name], bias.size)


class _FxSteps(Steps):
    def __init__(self, ctx: LoweringContext, node: torch.fx.Node, batch: int) -> None:
        self.ctx, self.node, self.batch = ctx, node, batch

    def op(self, op: str, suffix: str, inputs: list[str], width: int, **attrs: Any) -> str:
        return self.ctx.emit_inner(op, self.node, suffix, inputs, tensor_shape=(self.batch, width), helper=suffix, **attrs)

    def constant(self, name: str, data: np.ndarray) -> str:
        return self.ctx.constant(name, data)


def _gru_step(s: Steps, cell: Cell, x: str, h: str | None, tag: str) -> tuple[str, None]:
    """r, z = sigmoid(W_i x + b_i + W_h h + b_h); n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
    h' = n + z * (h - n)."""
    size = cell.hidden
    if h is None:  # zero state: W_h h vanishes, b_hr and b_hz join the input bias
        gx = s.project(x, cell.w_ih, cell.b_ih + np.concatenate([cell.b_hh[: 2 * size], np.zeros(size, np.float32)]), f"{tag}_gx")
        rz = s.op("sigmoid", f"{tag}_rz", [s.cols(gx, 0, 2 * size, f"{tag}_gx_rz")], 2 * size)
        r = s.cols(rz, 0, size, f"{tag}_r")
        recurrent = s.op("mul", f"{tag}_rn", [r, s.constant(f"{tag}.b_hn", cell.b_hh[2 * size :])], size)
    else:
        gx = s.project(x, cell.w_ih, cell.b_ih, f"{tag}_gx")
        gh = s.project(h, cell.w_hh, cell.b_hh, f"{tag}_gh")
        summed = s.op("add", f"{tag}_rz_in", [s.cols(gx, 0, 2 * size, f"{tag}_gx_rz"), s.cols(gh, 0, 2 * size, f"{tag}_gh_rz")], 2 * size)
        rz = s.op("sigmoid", f"{tag}_rz", [summed], 2 * size)
        r = s.cols(rz, 0, size, f"{tag}_r")
        recurrent = s.op("mul", f"{tag}_rn", [r, s.cols(gh, 2 * size, 3 * size, f"{tag}_gh_n")], size)
    z = s.cols(rz, size, 2 * size, f"{tag}_z")
    n = s.op("tanh", f"{tag}_n", [s.op("add", f"{tag}_n_in", [s.cols(gx, 2 * size, 3 * size, f"{tag}_gx_n"), recurrent], size)], size)
    if h is None:
        return s.op("sub", f"{tag}_h", [n, s.op("mul", f"{tag}_zn", [z, n], size)], size), None
    change = s.op("mul", f"{tag}_zd", [z, s.op("sub", f"{tag}_d", [h, n], size)], size)
    return s.op("add", f"{tag}_h", [n, change], size), None


def _lstm_step(s: Steps, cell: Cell, x: str, h: str | None, c: str | None, tag: str) -> tuple[str, str]:
    """i, f, o = sigmoid(.), g = tanh(.) of W_i x + b_i + W_h h + b_h; c' = f * c + i * g;
    h' = o * tanh(c')."""
    size = cell.hidden
    if h is None:
        gates = s.project(x, cell.w_ih, cell.b_ih + cell.b_hh, f"{tag}_gates")
    else:
        gx = s.project(x, cell.w_ih, cell.b_ih, f"{tag}_gx")
        gates = s.op("add", f"{tag}_gates", [gx, s.project(h, cell.w_hh, cell.b_hh, f"{tag}_gh")], 4 * size)
    if_gates = s.op("sigmoid", f"{tag}_if", [s.cols(gates, 0, 2 * size, f"{tag}_if_in")], 2 * size)
    g = s.op("tanh", f"{tag}_g", [s.cols(gates, 2 * size, 3 * size, f"{tag}_g_in")], size)
    o = s.op("sigmoid", f"{tag}_o", [s.cols(gates, 3 * size, 4 * size, f"{tag}_o_in")], size)
    fresh = s.op("mul", f"{tag}_ig", [s.cols(if_gates, 0, size, f"{tag}_i"), g], size)
    if c is None:
        cell_state = fresh
    else:
        kept = s.op("mul", f"{tag}_fc", [s.cols(if_gates, size, 2 * size, f"{tag}_f"), c], size)
        cell_state = s.op("add", f"{tag}_c", [kept, fresh], size)
    return s.op("mul", f"{tag}_h", [o, s.op("tanh", f"{tag}_tc", [cell_state], size)], size), cell_state


def _cells(ctx: LoweringContext, node: torch.fx.Node, kind: str, layers: int, directions: int, biases: bool) -> list[Cell]:
    params = list(node.args[2])  # type: ignore[arg-type]
    per_cell = 4 if biases else 2
    cells = []
    for index in range(layers * directions):
        group = params[index * per_cell : (index + 1) * per_cell]
        w_ih, w_hh = ctx.const(group[0]), ctx.const(group[1])
        if w_ih is None or w_hh is None or w_hh.shape[0] != w_hh.shape[1] * (3 if kind == "gru" else 4):
            raise InputError(
                f"{node.name}: a recurrent layer whose weights are not constants of the usual shape",
                "use nn.GRU or nn.LSTM without proj_size",
            )
        zeros = np.zeros(w_ih.shape[0], np.float32)
        b_ih = ctx.const(group[2]) if biases else zeros
        b_hh = ctx.const(group[3]) if biases else zeros
        prefix = f"l{index // directions}{'r' if index % directions else ''}"
        cells.append(Cell(kind, ctx.name(group[0]), ctx.name(group[1]), np.asarray(b_ih), np.asarray(b_hh), int(w_hh.shape[1]), prefix))
    return cells


def _zero_state(ctx: LoweringContext, state: Any) -> bool:
    states = state if isinstance(state, (list, tuple)) else [state]
    return all((value := ctx.const(s)) is not None and not np.any(value) for s in states)


def run_layer(s: Steps, cell: Cell, inputs: list[str], reverse: bool) -> tuple[list[str], str, str | None]:
    h: str | None = None
    c: str | None = None
    outputs: list[str] = [""] * len(inputs)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    for t in order:
        tag = f"{cell.prefix}t{t}"
        if cell.kind == "gru":
            h, c = _gru_step(s, cell, inputs[t], h, tag)
        else:
            h, c = _lstm_step(s, cell, inputs[t], h, c, tag)
        outputs[t] = h
    assert h is not None
    return outputs, h, c


def _step_input(s: _FxSteps, x: str, t: int, features: int) -> str:
    """x[:, t] as a [N, F] tensor."""
    step = s.ctx.emit_inner(
        "slice", s.node, f"x{t}_3d", [x], tensor_shape=(s.batch, 1, features), helper=f"x{t}", axis=1, start=t, end=t + 1, step=1
    )
    return s.op("reshape", f"x{t}", [step], features, shape=[features])


def _publish(s: _FxSteps, kind: str, outputs: list[str], finals: list[str], cell_finals: list[str]) -> None:
    """What the getitems of the node read: the output sequence [N, T, W] (each step reshaped to
    [N, 1, W] and concatenated; unused when only some steps are read), h_n and, for an LSTM, c_n."""
    width = s.ctx.graph.tensors[outputs[0]].shape[1]
    rows = [
        s.ctx.emit_inner("reshape", s.node, f"y{t}", [h], tensor_shape=(s.batch, 1, width), helper=f"y{t}", shape=[1, width])
        for t, h in enumerate(outputs)
    ]
    sequence = s.ctx.emit_inner("concat", s.node, "y", rows, tensor_shape=(s.batch, len(outputs), width), helper="y", axis=1)
    s.ctx.sequences[sequence] = outputs
    names = [sequence, f"{s.node.name}_h_n"]
    s.ctx.stacks[names[1]] = finals
    if kind == "lstm":
        names.append(f"{s.node.name}_c_n")
        s.ctx.stacks[names[2]] = cell_finals
    s.ctx.tuples[s.node.name] = names


@lowers(aten.gru.input, aten.lstm.input)
def recurrent(ctx: LoweringContext, node: torch.fx.Node) -> None:
    kind = "gru" if node.target == aten.gru.input else "lstm"
    biases, layers = bool(node.args[3]), _int(node.args[4])
    bidirectional, batch_first = bool(node.args[7]), bool(node.args[8])
    if not batch_first:
        raise InputError(f"{node.name}: a {kind.upper()} with batch_first=False", "build it with batch_first=True (axis 0 is the batch)")
    if not _zero_state(ctx, node.args[1]):
        raise InputError(f"{node.name}: a {kind.upper()} given an initial state", "start from the default zero state")
    batch, steps, features = ctx.shape(node.args[0])  # type: ignore[arg-type]
    directions = 2 if bidirectional else 1
    cells = _cells(ctx, node, kind, layers, directions, biases)
    s = _FxSteps(ctx, node, batch)
    inputs = [_step_input(s, ctx.name(node.args[0]), t, features) for t in range(steps)]
    finals: list[str] = []
    cell_finals: list[str] = []
    for layer in range(layers):
        runs = [run_layer(s, cells[layer * directions + d], inputs, reverse=d == 1) for d in range(directions)]
        finals += [final for _, final, _ in runs]
        cell_finals += [c for _, _, c in runs if c is not None]
        if directions == 1:
            inputs = runs[0][0]
        else:
            width = 2 * cells[0].hidden
            inputs = [s.op("concat", f"l{layer}t{t}_both", [runs[0][0][t], runs[1][0][t]], width, axis=1) for t in range(steps)]
    _publish(s, kind, inputs, finals, cell_finals)
