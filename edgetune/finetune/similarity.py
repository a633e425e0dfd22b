"""Similarity pairs for a bi-encoder: each side is embedded on its own and the pair is scored
by the cosine of the two embeddings (Reimers and Gurevych, "Sentence-BERT", 2019).

- pairs with a score (any number: an STS 0-5 grade, a 0/1 paraphrase label): the CoSENT loss
  (Su, 2022), which asks only that the cosines rank the pairs as their scores do:
  ``log(1 + sum over s_i > s_j of exp(lambda * (cos_j - cos_i)))``. Unlike a regression of the
  cosine onto the score, it needs no mapping of the score's scale to [-1, 1];
- pairs without a score (each a positive: a question and its answer, a passage and its title):
  in-batch negatives, both ways (the other pairs of the batch are the negatives; the symmetric
  InfoNCE loss of van den Oord et al., 2018, as CLIP and sentence-transformers'
  MultipleNegativesRankingLoss use it).

The validation score is Spearman's rank correlation of cosines and scores (the STS benchmark's
measure), or, without scores, how often a side's nearest other side is its own pair.
A batch of pairs travels as ``[pairs, 2, ...]`` and runs through the model as ``[2 * pairs, ...]``
(first sides, then second sides): one forward, and both halves see the same weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COSENT_SCALE = 20.0  # lambda of CoSENT, as its author sets it
IN_BATCH_SCALE = 20.0  # inverse temperature of the in-batch cosines


def sides(x: torch.Tensor) -> torch.Tensor:
    """``[pairs, 2, ...]`` -> ``[2 * pairs, ...]``: the first sides, then the second."""
    return torch.cat([x[:, 0], x[:, 1]])


def halves(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings of the first sides and of the second, from a forward of ``sides(x)``."""
    count = len(out) // 2
    return out[:count], out[count:]


def pair_loss(out: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    """CoSENT on scored pairs, in-batch negatives on unscored ones (``out``: both halves)."""
    first, second = halves(out)
    if scores is None:
        return in_batch_loss(first, second)
    return cosent_loss(first, second, scores)


def cosent_loss(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    cosine = F.cosine_similarity(first, second, dim=-1) * COSENT_SCALE
    # difference[i, j] = cos_j - cos_i, counted where pair i should rank above pair j
    difference = cosine[None, :] - cosine[:, None]
    wrong = difference[scores[:, None] > scores[None, :]]
    return torch.logsumexp(torch.cat([wrong.new_zeros(1), wrong]), dim=0)


def in_batch_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    logits = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T * IN_BATCH_SCALE
    own = torch.arange(len(first))
    return 0.5 * (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own))


def pair_cosines(first: torch.Tensor | np.ndarray, second: torch.Tensor | np.ndarray) -> np.ndarray:
    a = np.asarray(first, np.float64).reshape(len(first), -1)
    b = np.asarray(second, np.float64).reshape(len(second), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (as Spearman's coefficient needs them)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranked = np.empty(len(values), np.float64)
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranked[order[start:end]] = 0.5 * (start + end - 1) + 1.0
            start = end
    return ranked


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64)))


def pair_recall(first: np.ndarray, second: np.ndarray) -> float:
    """The share of first sides whose most similar second side is their own pair."""
    a = np.asarray(first, np.float64).reshape(len(first), -1)
    b = np.asarray(second, np.float64).reshape(len(second), -1)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(((a @ b.T).argmax(axis=1) == np.arange(len(a))).mean())


def pair_score(first: np.ndarray, second: np.ndarray, scores: np.ndarray | None) -> tuple[float, float]:
    """Higher is better: (Spearman, Pearson) of cosines against scores; without scores, (recall
    at 1 of the own pair, mean cosine of the pairs)."""
    cosines = pair_cosines(first, second)
    if scores is None:
        return pair_recall(first, second), float(cosines.mean())
    return spearman(cosines, scores), pearson(cosines, np.asarray(scores, np.float64))


def scored_outputs(outputs: dict[str, np.ndarray | None], count: int, scores: np.ndarray | None) -> dict[str, Any]:
    """Each model's outputs for ``count`` pairs, run as both sides (first sides, then second),
    scored as the fine-tune validates: the report's similarity block."""
    block: dict[str, Any] = {
        "pairs": count,
        "metric": "spearman" if scores is not None else "recall_at_1",
        "note": "the cosine of each pair's two embeddings against its score (Spearman's rank correlation)"
        if scores is not None
        else "the share of first sides whose most similar second side is their own pair",
    }
    for name, out in outputs.items():
        if out is not None:
            flat = out.reshape(len(out), -1)
            block[name] = pair_metrics(flat[:count], flat[count:], scores)
    return block


def pair_metrics(first: np.ndarray, second: np.ndarray, scores: np.ndarray | None) -> dict[str, float]:
    """The report's figures for one model's embeddings of both sides."""
    main, other = pair_score(first, second, scores)
    if scores is None:
        return {"recall_at_1": round(main, 6), "cosine_mean": round(other, 6)}
    return {"spearman": round(main, 6), "pearson": round(other, 6)}
