"""Recover: a short fine-tune under a hard budget that wins back accuracy lost to compression.

The captured graph trains in PyTorch: in float after pruning, or quantization-aware through
the exporters' own int8 quantizer with learned scales. Distillation from the uncompressed
model mixes with the task loss; the best model on a validation split is kept.
"""

from __future__ import annotations

from typing import Any

from edgetune.finetune.budget import Budget, parse_budget, parse_memory
from edgetune.finetune.strategy import Strategy, parse_strategy

# Imported on first use: they import torch, which the recipe commands never need.
_LAZY = {"Augmentation": "augment", "parse_augment": "augment", "FinetuneConfig": "train", "finetune": "train"}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"edgetune.finetune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgetune.finetune' has no attribute {name!r}")
