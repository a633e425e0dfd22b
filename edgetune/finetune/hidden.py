"""Intermediate-layer distillation for transformers (TinyBERT, Jiao et al., Findings of EMNLP
2020, section 3.1): besides the outputs, the student's hidden states follow the teacher's.

The hidden states are the LayerNorm outputs: the embeddings' and each layer's (a BERT layer
ends in one), which pruning heads and feed-forward neurons leaves at the model's width and
under the same names, so the layer map is the identity. The loss is the mean over matched
states of their mean squared error, added to the output distillation; attention maps are
left out, since pruned layers have fewer heads than the teacher's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgetune.errors import InputError
from edgetune.ir.graph import Graph

DISTILL = ("predictions", "intermediate")
HIDDEN_WEIGHT = 1.0  # of the hidden-state term against the output distillation's


def matched_states(student: Graph, teacher: Graph) -> list[str]:
    """The LayerNorm outputs that both graphs compute, at the same shape, in the student's order."""
    names = [node.outputs[0] for node in student.nodes if node.op == "layer_norm"]
    matched = [n for n in names if n in teacher.tensors and teacher.tensors[n].shape == student.tensors[n].shape]
    if not matched:
        raise InputError(
            "intermediate distillation matches the student's LayerNorm outputs with the original model's, and there are none",
            'use finetune.distill = "predictions" for a model without LayerNorm',
        )
    return matched


def collector(names: list[str]) -> tuple[dict[str, torch.Tensor], Callable[[str, torch.Tensor], None]]:
    """A dict that fills with the named tensors, and the observer that fills it."""
    found: dict[str, torch.Tensor] = {}
    wanted = set(names)

    def observe(name: str, value: torch.Tensor) -> None:
        if name in wanted:
            found[name] = value

    return found, observe


def hidden_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """The mean over ``names`` of the student's states' mean squared error to the teacher's."""
    return torch.stack([F.mse_loss(student[name], teacher[name]) for name in names]).mean()
