"""Run an IR graph in PyTorch, in float or as a fake-quantized simulation of int8.

The simulation applies the exact integer semantics at every quantized tensor
(``torch.fake_quantize_*`` rounds half to even and saturates, as ONNX QuantizeLinear and
TFLite do), so it predicts the int8 artifacts and can later be trained (QAT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetune.ir.graph import Graph, Node, QParams
from edgetune.registry import Registry

Kernel = Callable[[Node, list[torch.Tensor]], torch.Tensor]
KERNELS: Registry[Kernel] = Registry("torch kernel")
kernel = KERNELS.register
Observer = Callable[[str, torch.Tensor], None]


def apply_act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    return x


# Samples for per-channel activation statistics (bias correction, BatchNorm re-estimation):
# all of them for small inputs, fewer for large ones, since each image brings many positions:
# at least MIN_STAT_SAMPLES, and about STAT_ELEMENTS input values in all.
MIN_STAT_SAMPLES = 16
STAT_ELEMENTS = 1 << 21


def bind_inputs(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The graph's input values from a batch: ``x`` itself for one input; for several,
    ``x[:, i]`` for input ``i`` (the data stacks them on axis 1, see data.Dataset)."""
    if len(graph.inputs) == 1:
        return {graph.inputs[0]: x}
    return {name: x[:, i] for i, name in enumerate(graph.inputs)}


def stat_sample_count(samples: np.ndarray) -> int:
    per_sample = max(1, int(np.prod(samples.shape[1:])))
    return int(min(len(samples), max(MIN_STAT_SAMPLES, STAT_ELEMENTS // per_sample)))


def without_act(node: Node) -> Node:
    """The same layer without its fused activation (for pre-activation values)."""
    return replace(node, attrs={**node.attrs, "act": "none"})


def run_preact(node: Node, x: torch.Tensor, constants: list[torch.Tensor]) -> torch.Tensor:
    """A weighted layer's output before its fused activation."""
    return KERNELS[node.op](without_act(node), [x, *constants])


@kernel("conv2d")
def _conv2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    top, left, bottom, right = node.attrs["pads"]
    if top == bottom and left == right:
        padding: tuple[int, int] = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    y = F.conv2d(x, weight, bias, tuple(node.attrs["stride"]), padding, tuple(node.attrs["dilation"]), node.attrs["groups"])
    return apply_act(y, node.act)


@kernel("conv_transpose2d")
def _conv_transpose2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    top, left = node.attrs["pads"][:2]
    y = F.conv_transpose2d(x, weight.transpose(0, 1), bias, tuple(node.attrs["stride"]), (top, left), tuple(node.attrs["output_padding"]))
    return apply_act(y, node.act)


@kernel("linear")
def _linear(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return apply_act(F.linear(args[0], args[1], args[2] if len(args) > 2 else None), node.act)


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
}


@kernel("add", "sub", "mul", "div")
def _binary(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    if node.attrs.get("integer"):  # integers (position ids): their constants are stored as float
        args = [a.round().to(torch.int64) if a.is_floating_point() else a for a in args]
    return apply_act(_BINARY[node.op](args[0], args[1]), node.act)


@kernel("relu")
def _relu(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.relu(args[0])


@kernel("relu6")
def _relu6(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.relu6(args[0])


@kernel("clamp")
def _clamp(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.clamp(args[0], node.attrs.get("min"), node.attrs.get("max"))


@kernel("sigmoid")
def _sigmoid(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.sigmoid(args[0])


@kernel("tanh")
def _tanh(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.tanh(args[0])


@kernel("hardswish")
def _hardswish(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.hardswish(args[0])


@kernel("leaky_relu")
def _leaky_relu(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.leaky_relu(args[0], node.attrs["alpha"])


@kernel("prelu")
def _prelu(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.where(args[0] >= 0, args[0], args[0] * args[1])


@kernel("layer_norm")
def _layer_norm(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.layer_norm(args[0], (args[0].shape[-1],), args[1], args[2], node.attrs["eps"])


@kernel("group_norm")
def _group_norm(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.group_norm(args[0], node.attrs["groups"], args[1], args[2], node.attrs["eps"])


@kernel("matmul")
def _matmul(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.matmul(args[0], args[1])


@kernel("gelu")
def _gelu(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.gelu(args[0], approximate="tanh" if node.attrs.get("approximate") else "none")


@kernel("resize")
def _resize(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    if node.attrs["mode"] == "nearest":
        return F.interpolate(args[0], size=tuple(node.attrs["size"]), mode="nearest")
    return F.interpolate(args[0], size=tuple(node.attrs["size"]), mode="bilinear", align_corners=node.attrs["align_corners"])


@kernel("slice")
def _slice(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    index = [slice(None)] * args[0].dim()
    index[node.attrs["axis"]] = slice(node.attrs["start"], node.attrs["end"], node.attrs["step"])
    return args[0][tuple(index)]


@kernel("log_softmax")
def _log_softmax(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.log_softmax(args[0], dim=node.attrs["axis"])


@kernel("elu", "softplus", "mish")
def _float_activation(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    if node.op == "elu":
        return F.elu(args[0], node.attrs["alpha"])
    return F.softplus(args[0]) if node.op == "softplus" else F.mish(args[0])


@kernel("l2_normalize")
def _l2_normalize(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.normalize(args[0], dim=node.attrs["axis"], eps=node.attrs["eps"])


@kernel("depth_to_space")
def _depth_to_space(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return F.pixel_shuffle(args[0], node.attrs["block"])


@kernel("softmax")
def _softmax(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.softmax(args[0], node.attrs["axis"])


@kernel("global_avgpool")
def _global_avgpool(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return args[0].mean(dim=(2, 3), keepdim=True)


@kernel("avgpool2d")
def _avgpool2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    top, left, _, _ = node.attrs["pads"]
    return F.avg_pool2d(args[0], node.attrs["kernel"], node.attrs["stride"], (top, left))


@kernel("maxpool2d")
def _maxpool2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    top, left, bottom, right = node.attrs["pads"]
    if (top, left) == (bottom, right):
        return F.max_pool2d(args[0], node.attrs["kernel"], node.attrs["stride"], (top, left))
    # uneven (ceil_mode's extra row and column): pad with -inf, which no window's max takes
    padded = F.pad(args[0], (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(padded, node.attrs["kernel"], node.attrs["stride"])


@kernel("mean")
def _mean(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return args[0].mean(dim=tuple(node.attrs["axes"]), keepdim=node.attrs["keepdim"])


@kernel("gather")
def _gather(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """Rows of the table (second input) at the ids (first input)."""
    return F.embedding(args[0].long(), args[1])


@kernel("cast")
def _cast(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """Integer values (an attention mask) as float."""
    return args[0].to(torch.float32)


@kernel("compare")
def _compare(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """0/1 integers where ``x == value`` (or ``!=``)."""
    equal = args[0] == node.attrs["value"]
    return (equal if node.attrs["test"] == "eq" else ~equal).to(torch.int64)


@kernel("cumsum")
def _cumsum(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.cumsum(args[0], dim=node.attrs["axis"])


@kernel("expand")
def _expand(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return args[0].expand(args[0].shape[0], *node.attrs["shape"])


@kernel("channels")
def _channels(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """Channels of the last axis scaled by ``factors``, then ``copies`` of some of them
    appended (quantize/stream.py); an identity without either."""
    x = args[0]
    if node.attrs["factors"] is not None:
        x = x * torch.tensor(node.attrs["factors"], dtype=x.dtype)
    if node.attrs["copies"]:
        x = torch.cat([x, x.index_select(-1, torch.tensor(node.attrs["copies"], dtype=torch.long))], dim=-1)
    return x


@kernel("reshape")
def _reshape(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return args[0].reshape(args[0].shape[0], *node.attrs["shape"])


@kernel("transpose")
def _transpose(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return args[0].permute(*node.attrs["perm"])


@kernel("pad")
def _pad(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    widths: list[int] = []
    for before, after in reversed(node.attrs["pads"]):
        widths += [before, after]
    return F.pad(args[0], widths, value=node.attrs["value"])


@kernel("concat")
def _concat(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(args, dim=node.attrs["axis"])


def fake_quant(x: torch.Tensor, q: QParams) -> torch.Tensor:
    if q.axis is None:
        scale, zero_point = float(q.scale[0]), int(q.zero_point[0])
        if x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled()):
            out = _fake_quant_no_grad(x, scale, zero_point, q.qmin, q.qmax)
            # The steps agree with torch's kernel on every value but NaN (it gives qmin, the steps
            # NaN); a sum is cheaper than a finiteness test of x, and NaN in it sends the tensor
            # to the kernel (a sum that overflows to inf - inf does too, harmlessly).
            if not bool(torch.isnan(out.sum())):
                return out
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, q.qmin, q.qmax)
    scales = torch.from_numpy(q.scale)
    zero_points = torch.from_numpy(q.zero_point.astype(np.int32))
    return torch.fake_quantize_per_channel_affine(x, scales, zero_points, q.axis, q.qmin, q.qmax)


def _fake_quant_no_grad(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine`` without its gradient mask, bit for bit on
    float32 values other than NaN: ``(clamp(round(x * (1/scale)) + zero_point) - zero_point) * scale``
    with the reciprocal and every step in float32, rounding half to even, as its CPU kernel
    does. That kernel runs element by element; these vectorized steps take about a quarter of
    its time (bias correction and AdaRound walk every activation through it)."""
    inverse = float(np.float32(1.0) / np.float32(scale))
    out = x * inverse
    return out.round_().add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)


def quantize_bias(bias: torch.Tensor, q: QParams) -> torch.Tensor:
    """Round a bias to its int32 grid (``scale = input scale x weight scale``, zero point 0)."""
    scale = torch.from_numpy(q.scale).to(bias.dtype)
    levels = torch.clamp(torch.round(bias / scale), q.qmin, q.qmax)
    return levels * scale


class GraphRunner(nn.Module):
    """Executes a graph; ``quantized=True`` simulates the int8 model from the tensors' QParams."""

    def __init__(self, graph: Graph, quantized: bool = False) -> None:
        super().__init__()
        self.graph = graph
        self.quantized = quantized
        missing = KERNELS.missing(n.op for n in graph.nodes)
        if missing:
            raise NotImplementedError(f"no torch kernel for {', '.join(missing)}")
        self.constants: dict[str, torch.Tensor] = {}
        for name, tensor in graph.tensors.items():
            if tensor.data is None:
                continue
            value = torch.from_numpy(np.ascontiguousarray(tensor.data))
            if quantized and tensor.quant is not None:
                value = torch.from_numpy(np.ascontiguousarray(tensor.int8_source))
                value = quantize_bias(value, tensor.quant) if tensor.quant.is_bias else fake_quant(value, tensor.quant)
            self.constants[name] = value

    # Gradient checkpointing: with N > 0 segments, training keeps only the activations at
    # segment boundaries and recomputes the rest during the backward pass.
    checkpoint_segments = 0

    def forward(self, x: torch.Tensor, observe: Observer | None = None) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for name, value in bind_inputs(self.graph, x).items():
            values[name] = self._finish(name, value, observe)
        if self.checkpoint_segments and torch.is_grad_enabled() and observe is None:
            return self._forward_checkpointed(values)
        for node in self.graph.nodes:
            self.run_node(node, values, observe)
        return values[self.graph.outputs[0]]

    def run_node(self, node: Node, values: dict[str, torch.Tensor], observe: Observer | None = None) -> None:
        args = [values[name] if name in values else self.constant(name) for name in node.inputs if name]
        out = KERNELS[node.op](node, args)
        values[node.outputs[0]] = self._finish(node.outputs[0], out, observe)

    def _forward_checkpointed(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        nodes = self.graph.nodes
        size = max(1, -(-len(nodes) // self.checkpoint_segments))
        segments = [nodes[i : i + size] for i in range(0, len(nodes), size)]
        for index, segment in enumerate(segments):
            later = {name for node in (n for s in segments[index + 1 :] for n in s) for name in node.inputs} | set(self.graph.outputs)
            wanted = [name for name in values if name in later or any(name in node.inputs for node in segment)]
            produced = [node.outputs[0] for node in segment]
            keep = [name for name in [*wanted, *produced] if name in later]

            def run(
                *tensors: torch.Tensor, segment: list[Node] = segment, wanted: list[str] = wanted, keep: list[str] = keep
            ) -> tuple[torch.Tensor, ...]:
                local = dict(zip(wanted, tensors))
                for node in segment:
                    self.run_node(node, local, None)
                return tuple(local[name] for name in keep)

            outputs = checkpoint(run, *[values[name] for name in wanted], use_reentrant=False)
            values = dict(zip(keep, outputs))
        return values[self.graph.outputs[0]]

    def constant(self, name: str) -> torch.Tensor:
        """A constant operand as the kernels see it (quantization-aware training overrides this)."""
        return self.constants[name]

    def _finish(self, name: str, value: torch.Tensor, observe: Observer | None) -> torch.Tensor:
        if self.quantized:
            q = self.graph.tensors[name].quant
            if q is not None:
                value = fake_quant(value, q)
        if observe is not None:
            observe(name, value)
        return value


def run_batches(runner: GraphRunner, x: np.ndarray, batch: int = 64, observe: Observer | None = None) -> np.ndarray:
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            outputs.append(runner(torch.from_numpy(x[start : start + batch]), observe).numpy())
    return np.concatenate(outputs)
