"""Recover: a short fine-tune under a hard budget that wins back accuracy lost to compression.

The captured graph trains in PyTorch: in float after pruning, or quantization-aware through
the exporters' own int8 quantizer with learned scales. Distillation from the uncompressed
model mixes with the task loss; the best model on a validation split is kept.
"""

from edgetune.finetune.augment import Augmentation, parse_augment
from edgetune.finetune.budget import Budget, parse_budget, parse_memory
from edgetune.finetune.strategy import Strategy, parse_strategy
from edgetune.finetune.train import FinetuneConfig, finetune

__all__ = [
    "Augmentation",
    "Budget",
    "FinetuneConfig",
    "Strategy",
    "finetune",
    "parse_augment",
    "parse_budget",
    "parse_memory",
    "parse_strategy",
]
