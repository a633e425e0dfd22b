"""Recover: a short fine-tune under a hard budget that wins back accuracy lost to pruning.

The captured graph trains in PyTorch (its weights become parameters), with distillation
from the unpruned model mixed with cross-entropy on labels when the data has them; the
best model on a validation split is kept. Quantization-aware training is a later slice.
"""

from edgetune.finetune.budget import Budget, parse_budget
from edgetune.finetune.train import FinetuneConfig, finetune

__all__ = ["Budget", "FinetuneConfig", "finetune", "parse_budget"]
