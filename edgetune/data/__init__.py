"""Calibration and evaluation data: bundled sets, .npz files, image folders, Python callables.

Every source becomes a :class:`Dataset`: float32 samples ``x`` (N x the model's input
shape without batch) and optional integer labels ``y``.
"""

from __future__ import annotations

from edgetune.data.dataset import Dataset, Role
from edgetune.data.sources import load_dataset

__all__ = ["Dataset", "Role", "load_dataset"]
