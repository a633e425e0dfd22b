"""Training losses and the validation score.

- classification: cross-entropy (optional label smoothing); distillation is the KL divergence
  between temperature-softened outputs (Hinton et al., 2015), scaled by T^2;
- regression: mean squared error to the targets; distillation is the MSE to the teacher;
- embedding (a sentence embedding, hidden states; no labels): distillation is one minus the
  cosine between each output vector (last axis) and the teacher's; validation is the mean cosine;
- similarity (an embedding trained on pairs, finetune/similarity.py): CoSENT on scored pairs,
  in-batch negatives on unscored ones; distillation as for an embedding, on both sides.

With labels and a teacher both, the two terms mix with ``distill_weight``; either alone works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgetune.finetune.similarity import pair_loss

TASKS = ("auto", "classification", "regression", "embedding")
SIMILARITY = "similarity"  # what "embedding" becomes on similarity pairs (resolved, not chosen)


def task_loss(out: torch.Tensor, targets: torch.Tensor, task: str, label_smoothing: float) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(out, targets.reshape(out.shape))
    return F.cross_entropy(out, targets, label_smoothing=label_smoothing)


def distill_loss(out: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float) -> torch.Tensor:
    if task in ("embedding", SIMILARITY):
        return 1.0 - F.cosine_similarity(out, teacher, dim=-1).mean()
    if task == "regression":
        return F.mse_loss(out, teacher)
    soft = F.softmax(teacher / temperature, 1)
    return F.kl_div(F.log_softmax(out / temperature, 1), soft, reduction="batchmean") * temperature**2


def mixed_loss(
    out: torch.Tensor,
    targets: torch.Tensor | None,
    teacher: torch.Tensor | None,
    task: str,
    distill_weight: float,
    temperature: float,
    label_smoothing: float,
) -> torch.Tensor:
    if task == SIMILARITY:  # scores or not, the pairs supervise
        supervised = pair_loss(out, targets)
        if teacher is None or distill_weight == 0.0:
            return supervised
        return distill_weight * distill_loss(out, teacher, task, temperature) + (1.0 - distill_weight) * supervised
    if targets is None:
        assert teacher is not None
        return distill_loss(out, teacher, task, temperature)
    supervised = task_loss(out, targets, task, label_smoothing)
    if teacher is None or distill_weight == 0.0:
        return supervised
    return distill_weight * distill_loss(out, teacher, task, temperature) + (1.0 - distill_weight) * supervised


def validation_score(out: torch.Tensor, reference: torch.Tensor, task: str) -> tuple[float, float]:
    """Higher is better: (accuracy, -cross-entropy) for classes, (-MSE, 0) for regression,
    (mean cosine, -MSE) for embeddings. The second member breaks ties on a small split."""
    if task == "embedding":
        return float(F.cosine_similarity(out, reference, dim=-1).mean()), -float(F.mse_loss(out, reference))
    if task == "regression":
        return -float(F.mse_loss(out, reference.reshape(out.shape))), 0.0
    accuracy = float((out.argmax(1) == reference).float().mean())
    return accuracy, -float(F.cross_entropy(out, reference))
