"""Which parameters train.

A strategy joins parts with ``+``:

- a layer selector, trained in full (weight and bias): ``full``, ``head``, ``last:K``, or
  ``gradual`` (more of them as the budget is spent: gradual unfreezing from the output towards
  the input, after Howard and Ruder, "Universal Language Model Fine-tuning", 2018);
- ``bias``: every other layer's bias (BitFit, Ben Zaken et al. 2022; TinyTL, Cai et al. 2020);
- ``lora:R``: a rank-R update ``B @ A`` of every other layer's weight (Hu et al., "LoRA",
  2021), merged into the weight before quantization and export;
- ``sparse:MEMORY``: the layers, and the share of output channels in each, whose update buys
  the most loss decrease per byte of training memory under MEMORY (after Lin et al.,
  "On-Device Training Under 256KB Memory", 2022: the MCUNetV3 sparse update);
- ``lite``: TinyTL's lite residual modules (``lite.py``), small branches at half resolution
  that train beside the frozen model and stay in the artifacts (``bias+lite`` is TinyTL).

``head+lora:8`` trains the classifier in full and the rest through rank-8 updates;
``bias+lora:4`` adds the biases. Without a selector, no layer trains in full. The parameter
sets live in ``peft.py``; layers are the graph's conv and linear nodes in execution order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from edgetune.errors import InputError
from edgetune.ir.graph import WEIGHTED_OPS, Graph

SELECTORS = ("full", "head", "last", "gradual")
_HINT = "use full, head, last:K or gradual, optionally joined with bias, lora:R, sparse:MEMORY or lite (e.g. head+lora:8)"


@dataclass(frozen=True)
class Strategy:
    kind: str = "full"  # full, head, last, gradual, or none (only the parts below train)
    count: int = 0  # layers for "last"
    bias: bool = False  # the biases of layers not trained in full
    lora: int = 0  # rank of the low-rank updates of layers not trained in full (0: none)
    sparse: int | None = None  # training-memory budget in bytes of the sparse update
    lite: bool = False  # lite residual modules added and trained

    def __str__(self) -> str:
        parts = [] if self.kind == "none" else [f"last:{self.count}" if self.kind == "last" else self.kind]
        parts += ["bias"] if self.bias else []
        parts += [f"lora:{self.lora}"] if self.lora else []
        parts += [f"sparse:{_bytes_text(self.sparse)}"] if self.sparse is not None else []
        parts += ["lite"] if self.lite else []
        return "+".join(parts)

    @property
    def efficient(self) -> bool:
        """Parameter-efficient parts are present (some layers train through them, not in full)."""
        return self.bias or bool(self.lora) or self.sparse is not None or self.lite

    def trainable_layers(self, layers: int, spent: float, frozen_inputs: int = 0) -> int:
        """How many layers, counted from the output, train in full when ``spent`` (0..1) of the budget is used.

        ``frozen_inputs`` more layers at the input side stay frozen whatever the strategy
        (the memory planner's choice).
        """
        allowed = max(1, layers - frozen_inputs)
        if self.kind == "none":
            return 0
        if self.kind == "head":
            return 1
        if self.kind == "last":
            return min(self.count, allowed)
        if self.kind == "gradual":
            # The budget is cut into one phase per layer; phase i trains the last i + 1 layers.
            return min(allowed, 1 + int(math.floor(min(spent, 0.999999) * layers)))
        return allowed


def parse_strategy(text: str) -> Strategy:
    parts = [part.strip() for part in text.strip().lower().split("+")]
    kind, count, bias, lora, sparse, lite = "none", 0, False, 0, None, False
    for part in parts:
        name, _, raw = part.partition(":")
        twice = name == "bias" and bias or name == "lora" and lora or name == "sparse" and sparse or name == "lite" and lite
        if name in SELECTORS and kind != "none" or twice:
            raise InputError(f"fine-tune strategy {text!r} names {name} twice", _HINT)
        if name in ("full", "head", "gradual") and not raw:
            kind = name
        elif name == "last" and raw.isdigit() and int(raw) > 0:
            kind, count = "last", int(raw)
        elif name == "bias" and not raw:
            bias = True
        elif name == "lite" and not raw:
            lite = True
        elif name == "lora" and raw.isdigit() and int(raw) > 0:
            lora = int(raw)
        elif name == "sparse" and raw:
            from edgetune.finetune.budget import parse_memory

            sparse = parse_memory(raw)
        else:
            raise InputError(f"fine-tune strategy {text!r} is unknown", _HINT)
    if kind == "full" and len(parts) > 1:
        raise InputError(f"fine-tune strategy {text!r} adds to full, which already trains every parameter", _HINT)
    if sparse is not None and (lora or kind in ("gradual",)):
        raise InputError(
            f"fine-tune strategy {text!r}: sparse picks its own layers", "combine sparse:MEMORY only with head, last:K or bias"
        )
    if lite and (lora or sparse is not None):
        raise InputError(
            f"fine-tune strategy {text!r}: lite modules train in full", "combine lite only with a selector and bias (bias+lite)"
        )
    return Strategy(kind, count, bias, lora, sparse, lite)


def weighted_layers(graph: Graph) -> list[tuple[str, list[str]]]:
    """(node name, [weight, bias]) for each conv and linear node, input side first."""
    return [(node.name, [name for name in node.inputs[1:] if name]) for node in graph.nodes if node.op in WEIGHTED_OPS]


def layer_depths(graph: Graph) -> dict[str, int]:
    """Each conv and linear layer's depth below the top one, for a discriminative learning rate.

    Without LayerNorm a layer is its own step. With it, the layers between two pairs of
    LayerNorms are one transformer block: a post-norm block (BERT) ends in two, a pre-norm one
    (GPT) starts with two, and counting pairs puts Q, K, V, the output projection and the
    feed-forward layers of one block together in either, with the head above the last.
    """
    transformer = any(node.op == "layer_norm" for node in graph.nodes)
    norms, position, steps = 0, 0, {}
    for node in graph.nodes:
        if node.op == "layer_norm":
            norms += 1
        elif node.op in WEIGHTED_OPS:
            steps[node.name] = (norms + 1) // 2 if transformer else position
            position += 1
    top = max(steps.values(), default=0)
    return {name: top - step for name, step in steps.items()}


PREFIXES = ("lora_a:", "lora_b:", "rows:", "scale:")  # peft.py's and qat.py's parameter names before a tensor's


def parameter_depths(graph: Graph, params: Iterable[str]) -> dict[str, int]:
    """The depth (``layer_depths``) of each trained parameter that belongs to a layer: its
    weight or bias, or a LoRA factor, row update or QAT scale of one."""
    depths = layer_depths(graph)
    owner = {tensor: depths[name] for name, tensors in weighted_layers(graph) for tensor in tensors}
    found = {}
    for param in params:
        prefix = next((p for p in PREFIXES if param.startswith(p)), "")
        tensor = param[len(prefix) :]
        if tensor in owner:
            found[param] = owner[tensor]
    return found


def _bytes_text(value: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value / 1e3:.3f}KB"  # read back to the byte: parse_memory rounds
