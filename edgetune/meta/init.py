"""A compression run that starts its fine-tune from a meta-learned initialization
(``finetune.init = "meta.edgetune"`` in the recipe).

The run's model takes the initialization's weights right after capture (so that pruning and
calibration see them), and its fine-tune is the few-shot adaptation the initialization was
meta-trained for: SGD for its inner steps at its inner learning rate on the training data's
classes, unless the recipe's ``finetune.budget`` or ``finetune.lr`` say otherwise. The
initialization must come from the same model: the same weighted layers with the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.finetune.budget import Budget
from edgetune.finetune.strategy import Strategy
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.meta.adapt import AdaptConfig
from edgetune.meta.head import head_node, set_way


@dataclass(frozen=True)
class FewShotInit:
    """A fine-tune replaced by few-shot adaptation from the meta-initialization at ``path``."""

    path: str
    adapt: AdaptConfig
    qat: bool = False  # adapt the calibrated int8 model (after calibration) rather than the float one

    def to_dict(self) -> dict[str, Any]:
        a = self.adapt
        return {"init": self.path, "steps": a.steps, "lr": a.lr, "seconds": a.seconds, "memory_bytes": a.memory, "strategy": a.strategy}


def adapt_strategy(strategy: Strategy) -> str:
    """The adaptation strategy a fine-tune strategy names: full, head, or bias (with the head)."""
    if strategy.lora or strategy.sparse is not None or strategy.kind not in ("full", "head", "none"):
        raise InputError(
            f"finetune.strategy {strategy} has no few-shot form: an adaptation from finetune.init trains full, head or bias",
            "set finetune.strategy to full, head or bias",
        )
    if strategy.bias:
        return "bias"
    return strategy.kind


def few_shot_init(path: str, budget: Budget | None, lr: float | None, memory: int | None, strategy: Strategy, qat: bool) -> FewShotInit:
    """The typed adaptation a recipe with ``finetune.init`` asks for: a budget in steps or
    epochs is that many full-batch SGD steps, one in time limits the inner steps."""
    steps = int(budget.amount) if budget is not None and budget.kind != "seconds" else None
    seconds = budget.amount if budget is not None and budget.kind == "seconds" else None
    return FewShotInit(path, AdaptConfig(steps, lr, seconds, memory, adapt_strategy(strategy)), qat)


def load_init(path: str) -> Graph:
    """The graph of a ``meta.edgetune``, refused when it carries no meta-initialization."""
    from edgetune.ir.serialize import load_graph

    if not Path(path).is_file():
        raise InputError(f"finetune.init {path} does not exist", "give the meta.edgetune that edgetune meta-init wrote")
    graph = load_graph(Path(path))
    if "meta_init" not in graph.meta:
        raise InputError(f"finetune.init {path} holds no meta-initialization", "write one with edgetune meta-init MODEL --tasks DATA")
    return graph


def apply_init(graph: Graph, init: Graph, path: str) -> dict[str, Any]:
    """``graph`` given the weights of ``init`` (in place), its head first made as wide as the
    initialization's; the report block. Every weighted layer must match by name and shape."""
    ours = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    theirs = {node.name: node for node in init.nodes if node.op in WEIGHTED_OPS}
    missing = [node.name for node in ours if node.name not in theirs]
    if missing or len(ours) != len(theirs):
        named = f"layer {missing[0]} is not in it" if missing else f"it has {len(theirs)} weighted layers, the model {len(ours)}"
        raise InputError(
            f"finetune.init {path} was meta-trained on another model: {named}",
            "meta-initialize the model this recipe compresses (edgetune meta-init MODEL)",
        )
    set_way(graph, int(init.meta["meta_init"]["way"]))
    if head_node(graph).name != head_node(init).name:
        raise InputError(f"finetune.init {path} has another head than the model", "meta-initialize the model this recipe compresses")
    copied = 0
    for node in ours:
        for name, source in zip(node.inputs[1:3], theirs[node.name].inputs[1:3]):
            if not name or not source:
                continue
            value = init.const(source)
            tensor = graph.tensors[name]
            if tuple(value.shape) != tuple(tensor.shape):
                raise InputError(
                    f"finetune.init {path} was meta-trained on another model: {node.name} has a {_dims(value.shape)}"
                    f" {'weight' if name == node.inputs[1] else 'bias'} there, {_dims(tensor.shape)} here",
                    "meta-initialize model.source as it is (edgetune meta-init MODEL): the weights are taken before pruning",
                )
            if tensor.quant is not None and init.tensors[source].quant is None:
                raise InputError(
                    f"finetune.init {path} was meta-trained in float, and the model is int8",
                    "meta-initialize the compressed model itself: edgetune meta-init model.edgetune",
                )
            tensor.data, tensor.qdata = value.copy(), None
            if tensor.quant is not None:
                tensor.quant = init.tensors[source].quant
            copied += int(value.size)
    graph.meta["meta_init"] = dict(init.meta["meta_init"])
    return {"init": path, "layers": len(ours), "parameters": copied, **graph.meta["meta_init"]}


def _dims(shape: Any) -> str:
    return "x".join(map(str, shape))
