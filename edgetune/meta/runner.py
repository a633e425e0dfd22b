"""The graph with its weights as explicit arguments.

``loss(weights, x, y)`` is a pure function of ``weights`` (a dict of tensors by tensor
name), so ``torch.func.grad`` can differentiate it, and differentiate an inner loop of it
again for second-order MAML. On a calibrated graph the int8 model is simulated with the
graph's own (fixed) quantization parameters and a straight-through estimator written from
differentiable ops (a clamp with the rounding error added as a constant), because PyTorch's
fake-quantize kernels have no second derivative. The gradient passes inside each tensor's
int8 range and stops outside it, as in QAT.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from edgetune.ir import quant as params
from edgetune.ir.graph import WEIGHTED_OPS, Graph, QParams
from edgetune.ir.torch_exec import GraphRunner, Observer, fake_quant, quantize_bias


def _bounds(q: QParams, like: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real range of ``q``'s grid; a weight's is symmetric, +-``levels`` steps (the int8
    specification's [-127, 127], or [-7, 7] at 4 bits)."""
    scale = torch.from_numpy(q.scale.astype(np.float32))
    zero = torch.from_numpy(q.zero_point.astype(np.float32))
    low, high = ((q.qmin - zero) * scale, (q.qmax - zero) * scale) if levels is None else (-levels * scale, levels * scale)
    if q.axis is not None:
        shape = [1] * like.dim()
        shape[q.axis] = -1
        low, high = low.reshape(shape), high.reshape(shape)
    return low, high


def straight_through(value: torch.Tensor, q: QParams, levels: int | None = None) -> torch.Tensor:
    """``fake_quant(value)`` forward, clamped to the grid; the gradient of the clamp backward."""
    low, high = _bounds(q, value, levels)
    clamped = torch.maximum(torch.minimum(value, high), low)
    return clamped + (fake_quant(clamped.detach(), q) - clamped.detach())


class MetaRunner(GraphRunner):
    """Runs ``graph`` on weights given per call (``using``); int8-simulated when calibrated."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        self.calibrated = graph.calibrated
        layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
        self.names = list(dict.fromkeys(name for node in layers for name in node.inputs[1:3] if name))
        self.biases = {node.inputs[2] for node in layers if len(node.inputs) > 2 and node.inputs[2]}

    def initial(self) -> dict[str, torch.Tensor]:
        """The graph's weights and biases (what the int8 model holds, when calibrated)."""
        source = {name: self.graph.tensors[name].int8_source if self.calibrated else self.graph.tensors[name].data for name in self.names}
        return {name: torch.from_numpy(np.array(value, np.float32)) for name, value in source.items()}

    @contextmanager
    def using(self, weights: dict[str, torch.Tensor]) -> Iterator[None]:
        saved = {name: self.constants[name] for name in weights}
        self.constants.update(weights)
        try:
            yield
        finally:
            self.constants.update(saved)

    def logits(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        with self.using(weights):
            return self(x).reshape(len(x), -1)

    def loss(self, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(weights, x), y)

    def constant(self, name: str) -> torch.Tensor:
        value = self.constants[name]
        q = self.graph.tensors[name].quant
        if not self.calibrated or q is None:
            return value
        if name in self.biases:
            return value + (quantize_bias(value.detach(), q) - value.detach())
        return straight_through(value, q, params.levels_of(self.graph.meta, name))

    def _finish(self, name: str, value: torch.Tensor, observe: Observer | None) -> torch.Tensor:
        q = self.graph.tensors[name].quant
        if self.calibrated and q is not None:
            value = straight_through(value, q)
        if observe is not None:
            observe(name, value)
        return value

    def commit(self, weights: dict[str, torch.Tensor]) -> None:
        """Write ``weights`` into the graph; on a calibrated graph, weights are clipped to their
        int8 range (the exporters' rounding then lands where training saw it)."""
        for name, value in weights.items():
            data = value.detach().numpy().astype(np.float32)
            q = self.graph.tensors[name].quant
            if self.calibrated and q is not None and name not in self.biases:
                low, high = _bounds(q, value, params.levels_of(self.graph.meta, name))
                data = np.clip(data, low.numpy(), high.numpy()).astype(np.float32)
            self.graph.tensors[name].data = data
            self.graph.tensors[name].qdata = None
