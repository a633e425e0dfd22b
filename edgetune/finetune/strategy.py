"""Which layers train: all of them, only the head, the last k, or more of them as the budget
is spent (gradual unfreezing from the output towards the input, after Howard and Ruder,
"Universal Language Model Fine-tuning", 2018).

Layers are the graph's conv and linear nodes in execution order; a layer's weight and bias
train or stay frozen together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgetune.errors import InputError
from edgetune.ir.graph import WEIGHTED_OPS, Graph


@dataclass(frozen=True)
class Strategy:
    kind: str = "full"  # full, head, last or gradual
    count: int = 0  # layers for "last"

    def __str__(self) -> str:
        return f"last:{self.count}" if self.kind == "last" else self.kind

    def trainable_layers(self, layers: int, spent: float, frozen_inputs: int = 0) -> int:
        """How many layers, counted from the output, train when ``spent`` (0..1) of the budget is used.

        ``frozen_inputs`` more layers at the input side stay frozen whatever the strategy
        (the memory planner's choice).
        """
        allowed = max(1, layers - frozen_inputs)
        if self.kind == "head":
            return 1
        if self.kind == "last":
            return min(self.count, allowed)
        if self.kind == "gradual":
            # The budget is cut into one phase per layer; phase i trains the last i + 1 layers.
            return min(allowed, 1 + int(math.floor(min(spent, 0.999999) * layers)))
        return allowed


def parse_strategy(text: str) -> Strategy:
    kind, _, raw = text.strip().lower().partition(":")
    if kind in ("full", "head", "gradual") and not raw:
        return Strategy(kind)
    if kind == "last" and raw.isdigit() and int(raw) > 0:
        return Strategy("last", int(raw))
    raise InputError(f"fine-tune strategy {text!r} is unknown", "use full, head, last:K or gradual")


def weighted_layers(graph: Graph) -> list[tuple[str, list[str]]]:
    """(node name, [weight, bias]) for each conv and linear node, input side first."""
    return [(node.name, [name for name in node.inputs[1:] if name]) for node in graph.nodes if node.op in WEIGHTED_OPS]
