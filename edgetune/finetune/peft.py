"""Parameter-efficient updates (strategy.py's bias, lora:R and sparse:MEMORY parts) on a
training runner.

The graph's weights stay frozen; what trains is an update added to them:

- ``lora:R``: ``W + B @ A`` with ``A`` (R x fan-in) drawn at the scale of a default
  ``nn.Linear`` init and ``B`` (outputs x R) zero, so training starts from the model itself
  (Hu et al., "LoRA", 2021, section 4.1). A layer where rank R would hold as many numbers as
  the weight trains its weight in full instead (the report lists them);
- ``sparse``: ``W`` with some output channels' rows trained (``index_add``), so that gradients
  and optimizer state exist only for those rows;
- ``bias``: the biases train as they are (a layer without one gets a zero bias first);
- ``lite``: the lite residual branches' convolutions (``lite.py``) train as they are.

``merged`` folds the updates into the weights, so quantization and both exporters see a plain
model: the artifacts cost nothing extra.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetune.errors import InputError
from edgetune.finetune.lite import META_KEY as LITE_KEY
from edgetune.finetune.sparse import SparsePlan
from edgetune.finetune.strategy import Strategy
from edgetune.ir import quant as params
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Tensor

LORA_A, LORA_B, ROWS = "lora_a:", "lora_b:", "rows:"
PREFIXES = (LORA_A, LORA_B, ROWS)


def is_update(name: str) -> bool:
    """A parameter of an update (always trained), not one of the graph's tensors."""
    return name.startswith(PREFIXES)


def add_zero_biases(graph: Graph) -> list[str]:
    """Give every conv and linear layer without a bias a zero one (BitFit trains biases); on a
    calibrated graph it gets the int32 grid the exporters derive. Returns the layers changed."""
    changed = []
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS or len(node.inputs) > 2 and node.inputs[2]:
            continue
        weight = graph.const(node.inputs[1])
        name = f"{node.name}.bias"
        while name in graph.tensors:
            name += "_"
        tensor = Tensor(name, (weight.shape[0],), np.zeros(weight.shape[0], np.float32))
        x, w = graph.tensors[node.inputs[0]].quant, graph.tensors[node.inputs[1]].quant
        if x is not None and w is not None:
            tensor.quant = params.bias_params(x, w)
        graph.tensors[name] = tensor
        node.inputs[2:] = [name]
        changed.append(node.name)
    return changed


class Peft:
    """The updates of one run: ``params`` train, ``live`` names the graph tensors that train as
    they are (biases, full-rank LoRA layers' weights), ``weight`` gives a weight with its update."""

    def __init__(self, graph: Graph, strategy: Strategy, full: set[str], sparse: SparsePlan | None, seed: int) -> None:
        self.params: dict[str, nn.Parameter] = {}
        self.live: set[str] = set()
        self.rank: dict[str, int] = {}
        self.full_rank: list[str] = []  # LoRA layers trained in full: rank R is not smaller than the weight
        self.rows: dict[str, torch.Tensor] = {}  # weight -> the output channels its update trains
        generator = torch.Generator().manual_seed(seed)
        lite = set(graph.meta.get(LITE_KEY, {}).get("layers", ())) if strategy.lite else set()
        layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS and node.name not in full | lite]
        self.live |= {name for node in graph.nodes if node.name in lite for name in node.inputs[1:3] if name}
        if strategy.lora and not layers:
            raise InputError("lora:R has no layer to update", "the model has no conv or linear layer outside the ones trained in full")
        for node in layers:
            weight, bias = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
            if bias is not None and (strategy.bias or sparse is not None and node.name in sparse.biases):
                self.live.add(bias)
            if strategy.lora:
                self._add_lora(node.name, weight, graph.const(weight).shape, strategy.lora, generator)
            if sparse is not None and len(sparse.channels.get(node.name, ())):
                rows = graph.const(weight)[sparse.channels[node.name]]
                self.rows[weight] = torch.from_numpy(np.asarray(sparse.channels[node.name], np.int64))
                self.params[ROWS + weight] = nn.Parameter(torch.zeros(rows.shape))

    def _add_lora(self, layer: str, weight: str, shape: tuple[int, ...], rank: int, generator: torch.Generator) -> None:
        outputs, fan_in = shape[0], math.prod(shape[1:])
        if rank * (outputs + fan_in) >= outputs * fan_in:
            self.live.add(weight)
            self.full_rank.append(layer)
            return
        bound = 1.0 / math.sqrt(fan_in)
        self.rank[weight] = rank
        self.params[LORA_A + weight] = nn.Parameter((torch.rand(rank, fan_in, generator=generator) * 2 - 1) * bound)
        self.params[LORA_B + weight] = nn.Parameter(torch.zeros(outputs, rank))

    @property
    def updated(self) -> set[str]:
        """The weights that carry an update."""
        return {*self.rank, *self.rows}

    def weight(self, name: str, base: torch.Tensor, values: dict[str, Any] | None = None) -> torch.Tensor:
        """``base`` with its update (from ``values`` when given, else the live parameters)."""
        source = self.params if values is None else values
        if name in self.rank:
            return base + (source[LORA_B + name] @ source[LORA_A + name]).reshape(base.shape)
        if name in self.rows:
            return base.index_add(0, self.rows[name], source[ROWS + name])
        return base

    def merged(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Trained values with every update folded into its weight, and no update parameters."""
        with torch.no_grad():
            out = {name: value for name, value in values.items() if not is_update(name)}
            for name in [*self.rank, *self.rows]:
                out[name] = self.weight(name, values[name], values)
        return out

    def describe(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "update_parameters": sum(p.numel() for p in self.params.values()),
            "lora_layers": len(self.rank),
            "sparse_layers": len(self.rows),
        }
        if self.full_rank:
            report["lora_full_rank_layers"] = self.full_rank
        return report
