"""Intermediate-layer distillation for transformers (TinyBERT, Jiao et al., Findings of EMNLP
2020, section 3.1): besides the outputs, the student's hidden states (and, with ``tinybert``,
its attention) follow the teacher's.

- Hidden states are the LayerNorm outputs: the embeddings' and each layer's (a BERT layer
  ends in one). Pruning heads and neurons leaves them at the model's width and under the
  same names, and dropping layers leaves the others' names, so the layer map pairs states by
  name. A teacher that is another model (``--teacher``) shares no names: then TinyBERT's
  uniform map pairs the student's k-th state with the teacher's k x (T - 1) / (S - 1)-th, when
  the widths agree. The loss is their mean squared error.
- Attention (``tinybert``): where a student layer has as many heads as its teacher, the
  attention maps (the softmax outputs) are matched by KL divergence, the teacher's as the
  target (as MiniLM, Wang et al. 2020, does; TinyBERT takes the MSE of the scores before the
  softmax). Where heads were pruned the maps cannot pair, and the values' self-relations do
  instead: softmax(V V^T / sqrt(width)) over the layer's value vectors, one L x L map per
  sample whatever the number of heads (MiniLMv2's value relation, Wang et al. 2021, with one
  relation head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgetune.errors import InputError
from edgetune.ir.graph import Graph

DISTILL = ("predictions", "intermediate", "tinybert")
HIDDEN_WEIGHT = 1.0  # of the hidden-state term against the output distillation's
ATTENTION_WEIGHT = 1.0  # of the attention term
_PASS_THROUGH = ("reshape", "transpose")


@dataclass(frozen=True)
class Pair:
    """A student tensor, the teacher tensor it follows, and how: "hidden" (MSE), "attention"
    (KL between attention maps) or "relation" (KL between value self-relations)."""

    student: str
    teacher: str
    kind: str


@dataclass(frozen=True)
class Matching:
    pairs: tuple[Pair, ...]
    layer_map: str  # "by name" or "uniform"

    @property
    def student_names(self) -> list[str]:
        return [pair.student for pair in self.pairs]

    @property
    def teacher_names(self) -> list[str]:
        return [pair.teacher for pair in self.pairs]

    def to_dict(self) -> dict[str, object]:
        kinds = [pair.kind for pair in self.pairs]
        return {"layer_map": self.layer_map, **{kind: kinds.count(kind) for kind in ("hidden", "attention", "relation") if kind in kinds}}


def _norms(graph: Graph) -> list[str]:
    return [node.outputs[0] for node in graph.nodes if node.op == "layer_norm"]


def attention_points(graph: Graph) -> list[tuple[str, str]]:
    """(attention probabilities, value vectors [batch, tokens, width]) of each self-attention,
    in order: a softmax read by a matmul whose other operand comes, through reshapes and
    transposes, from a linear layer."""
    consumers, producers = graph.consumers(), graph.producers()
    points = []
    for node in graph.nodes:
        if node.op != "softmax":
            continue
        product = next((r for r in consumers.get(node.outputs[0], []) if r.op == "matmul"), None)
        if product is None:
            continue
        value = product.inputs[1] if product.inputs[0] == node.outputs[0] else product.inputs[0]
        while value in producers and producers[value].op in _PASS_THROUGH:
            value = producers[value].inputs[0]
        if value in producers and producers[value].op == "linear":
            points.append((node.outputs[0], value))
    return points


def _uniform(student: list[str], teacher: list[str]) -> list[tuple[str, str]]:
    """TinyBERT's uniform layer map: the first to the first, the last to the last, evenly between."""
    if len(student) == 1:
        return [(student[0], teacher[-1])]
    return [(name, teacher[round(k * (len(teacher) - 1) / (len(student) - 1))]) for k, name in enumerate(student)]


def matched_states(student: Graph, teacher: Graph, attention: bool = False) -> Matching:
    """The hidden states (and with ``attention`` the attention points) the student follows."""
    norms = _norms(student)
    shape = {name: student.tensors[name].shape for name in norms}
    same = [n for n in norms if n in teacher.tensors and teacher.tensors[n].shape == shape[n]]
    layer_map = "by name"
    hidden = [(n, n) for n in same]
    if not hidden and norms and _norms(teacher):
        layer_map = "uniform"
        hidden = [(s, t) for s, t in _uniform(norms, _norms(teacher)) if teacher.tensors[t].shape[1:] == shape[s][1:]]
    if not hidden:
        raise InputError(
            "intermediate distillation matches the student's LayerNorm outputs with the original model's, and there are none"
            " of the same width",
            'use finetune.distill = "predictions"',
        )
    pairs = [Pair(s, t, "hidden") for s, t in hidden]
    if attention:
        pairs += _attention_pairs(student, teacher, layer_map)
    return Matching(tuple(pairs), layer_map)


def _attention_pairs(student: Graph, teacher: Graph, layer_map: str) -> list[Pair]:
    mine, theirs = attention_points(student), attention_points(teacher)
    if not mine or not theirs:
        raise InputError(
            "tinybert distillation matches attention, and the model has no self-attention edgetune can follow",
            'use finetune.distill = "intermediate"',
        )
    by_probs = dict(theirs)
    if layer_map == "by name":
        paired = [((p, v), (p, by_probs[p])) for p, v in mine if p in by_probs]
    else:
        index = _uniform([p for p, _ in mine], [p for p, _ in theirs])
        paired = [((p, v), (t, by_probs[t])) for (p, v), (_, t) in zip(mine, index)]
    pairs = []
    for (probs, value), (teacher_probs, teacher_value) in paired:
        if student.tensors[probs].shape[1:] == teacher.tensors[teacher_probs].shape[1:]:
            pairs.append(Pair(probs, teacher_probs, "attention"))
        else:  # fewer heads: the values' relations, which do not depend on the head count
            pairs.append(Pair(value, teacher_value, "relation"))
    return pairs


def collector(names: list[str]) -> tuple[dict[str, torch.Tensor], Callable[[str, torch.Tensor], None]]:
    """A dict that fills with the named tensors, and the observer that fills it."""
    found: dict[str, torch.Tensor] = {}
    wanted = set(names)

    def observe(name: str, value: torch.Tensor) -> None:
        if name in wanted:
            found[name] = value

    return found, observe


def _relation(values: torch.Tensor) -> torch.Tensor:
    """log softmax(V V^T / sqrt(width)) per sample: [batch, tokens, tokens]."""
    values = values.reshape(values.shape[0], -1, values.shape[-1])
    return F.log_softmax(values @ values.transpose(1, 2) / values.shape[-1] ** 0.5, dim=-1)


def _kl(student_log: torch.Tensor, teacher_log: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the last axis, averaged over everything else."""
    rows = teacher_log.reshape(-1, teacher_log.shape[-1])
    return F.kl_div(student_log.reshape(rows.shape), rows, log_target=True, reduction="batchmean")


def hidden_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], matching: Matching) -> torch.Tensor:
    """The mean over paired hidden states of their MSE, plus ``ATTENTION_WEIGHT`` times the
    mean over paired attention points of their KL divergence."""
    hidden, attention = [], []
    for pair in matching.pairs:
        mine, theirs = student[pair.student], teacher[pair.teacher]
        if pair.kind == "hidden":
            hidden.append(F.mse_loss(mine, theirs))
        elif pair.kind == "attention":
            attention.append(_kl(torch.log(mine.clamp_min(1e-12)), torch.log(theirs.clamp_min(1e-12))))
        else:
            attention.append(_kl(_relation(mine), _relation(theirs)))
    loss = torch.stack(hidden).mean()
    if attention:
        loss = loss + ATTENTION_WEIGHT * torch.stack(attention).mean()
    return loss
