"""Walk a graph node by node over one set of samples, in float and int8-simulated side by side.

Post-training techniques that work layer by layer (bias correction, AdaRound) need, at each
weighted layer, the inputs that the float model and the quantized model feed it, with every
earlier layer already corrected. Running the whole model again for each layer would cost
quadratic time; this walk keeps every live tensor of both models for all samples at once,
visits the weighted layers in execution order, lets a visitor change that layer's constants
and parameters, and only then computes the layer's outputs. Tensors are freed after their
last reader, so memory stays at a few activations per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node
from edgetune.ir.torch_exec import KERNELS, apply_act, bind_inputs, fake_quant, quantize_bias, run_preact
from edgetune.progress import Progress


@dataclass
class LayerInputs:
    """What a visitor sees at one weighted layer (all samples at once)."""

    node: Node
    x_float: torch.Tensor  # the float model's input to the layer
    x_quant: torch.Tensor | None  # the int8-simulated model's input (None in a float-only walk)
    z_float: torch.Tensor  # the float model's output before the fused activation
    float_constants: dict[str, torch.Tensor]  # the graph's constants as they were before the walk


# A visitor may return the layer's int8-simulated output before activation, computed with
# the constants it leaves behind, to spare the walk computing it again.
Visitor = Callable[[LayerInputs], torch.Tensor | None]


def quantized_constant(graph: Graph, name: str) -> torch.Tensor:
    """A constant as the int8 model holds it: weights on their grid, biases on the int32 grid."""
    tensor = graph.tensors[name]
    assert tensor.int8_source is not None
    value = torch.from_numpy(np.ascontiguousarray(tensor.int8_source))
    if tensor.quant is None:
        return value
    return quantize_bias(value, tensor.quant) if tensor.quant.is_bias else fake_quant(value, tensor.quant)


def walk(
    graph: Graph,
    samples: np.ndarray,
    visit: Visitor,
    *,
    quantized: bool = True,
    progress: Progress | None = None,
    stage: str = "layer-wise pass",
    stop: Callable[[], bool] | None = None,
) -> None:
    """Run ``samples`` through ``graph`` and call ``visit`` at each weighted layer, before its
    int8-simulated output is computed. ``stop``, asked before each weighted layer, ends the walk
    there (a deadline has passed): the layers left are not visited.

    The float side always uses the constants the graph held when the walk began; the
    quantized side reads the graph's constants and parameters at the moment each node
    runs, so what a visitor changes is what later layers see.
    """
    float_constants = {name: torch.from_numpy(t.data.copy()) for name, t in graph.tensors.items() if t.data is not None}
    last = last_use(graph)
    x = torch.from_numpy(np.ascontiguousarray(samples))
    floats: dict[str, torch.Tensor] = {}
    quants: dict[str, torch.Tensor] = {}
    for name, value in bind_inputs(graph, x).items():
        floats[name] = value
        if quantized:
            q = graph.tensors[name].quant
            quants[name] = fake_quant(value, q) if q is not None else value
    total = len(graph.nodes)
    with torch.no_grad():
        for index, node in enumerate(graph.nodes):
            operands = [name for name in node.inputs if name]
            args_f = [floats[n] if n in floats else float_constants[n] for n in operands]
            z_quant = None
            if node.op in WEIGHTED_OPS and stop is not None and stop():
                break
            if node.op in WEIGHTED_OPS:
                z_float = run_preact(node, args_f[0], args_f[1:])
                floats[node.outputs[0]] = apply_act(z_float, node.act)
                inputs = LayerInputs(node, args_f[0], quants.get(node.inputs[0]), z_float, float_constants)
                z_quant = visit(inputs)
            else:
                floats[node.outputs[0]] = KERNELS[node.op](node, args_f)
            if quantized:
                if z_quant is not None:
                    out = apply_act(z_quant, node.act)
                else:
                    args_q = [quants[n] if n in quants else quantized_constant(graph, n) for n in operands]
                    out = KERNELS[node.op](node, args_q)
                q = graph.tensors[node.outputs[0]].quant
                quants[node.outputs[0]] = fake_quant(out, q) if q is not None else out
            for name in operands:
                if last.get(name) == index:
                    floats.pop(name, None)
                    quants.pop(name, None)
            if progress is not None:
                progress(index + 1, total, stage)


def last_use(graph: Graph) -> dict[str, int]:
    """Index of the last node that reads each activation (graph outputs are never freed)."""
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and graph.tensors[name].data is None:
                last[name] = index
    for name in graph.outputs:
        last.pop(name, None)
    return last
