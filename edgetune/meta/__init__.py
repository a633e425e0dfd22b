"""Few-shot learning: a meta-learned initialization (MAML, first-order MAML, Reptile) and
the few-shot adaptation it prepares a model for.

``episodes.py`` samples N-way K-shot tasks from a labelled data set's classes, ``head.py``
gives the model an N-way head, ``runner.py`` runs the graph with its weights as explicit
arguments (so that ``torch.func`` can differentiate through an inner loop), ``learn.py`` is
the meta-training loop and ``adapt.py`` the adaptation a device would run.
"""

from __future__ import annotations

from typing import Any

# Imported on first use: they import torch.
_LAZY = {"MetaConfig": "learn", "meta_train": "learn", "AdaptConfig": "adapt", "adapt": "adapt", "set_way": "head"}

__all__ = ["AdaptConfig", "MetaConfig", "adapt", "meta_train", "set_way"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"edgetune.meta.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgetune.meta' has no attribute {name!r}")
