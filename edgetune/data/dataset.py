"""The in-memory data set every stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edgetune.errors import InputError

Role = Literal["calibration", "test", "train"]


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (and labels or targets ``y``).

    ``inputs`` names the model's inputs the samples are for (the forward's argument names), when
    the data names them. Several inputs of one shape and type (token ids, attention mask, token
    types) are stacked on axis 1: ``x`` is ``[samples, inputs, *shape]``, and every stage slices
    samples on axis 0 as for one input; the graph runners and the artifacts' runners feed
    ``x[:, i]`` to input ``i``.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    labels: tuple[str, ...] = ()
    preprocess: dict[str, object] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or len(self.x) == 0:
            raise InputError(f"data set {self.source} is empty", "give at least one sample")
        if self.stacked and (self.x.ndim < 3 or self.x.shape[1] != len(self.inputs)):
            raise ValueError(
                f"{len(self.inputs)} stacked inputs need samples of shape [N, {len(self.inputs)}, ...], not {list(self.x.shape)}"
            )
        if self.x.dtype in (np.int32, np.int64):  # token ids (images come as uint8, or floats)
            object.__setattr__(self, "x", self.x.astype(np.int64))
        elif self.x.dtype != np.float32:
            object.__setattr__(self, "x", self.x.astype(np.float32))
        if not self.is_indices and not np.isfinite(self.x).all():
            bad = int((~np.isfinite(self.x)).reshape(len(self.x), -1).any(axis=1).sum())
            raise InputError(
                f"data set {self.source} holds NaN or infinite values in {bad} of {len(self.x)} samples",
                "clean the data or fix its preprocessing",
            )
        if self.y is not None:
            if len(self.y) != len(self.x):
                raise InputError(
                    f"data set {self.source} has {len(self.x)} samples but {len(self.y)} labels",
                    "give one label or target per sample",
                )
            if not (np.issubdtype(self.y.dtype, np.integer) or np.issubdtype(self.y.dtype, np.floating)):
                raise InputError(
                    f"labels of {self.source} are {self.y.dtype}", "store class indices (integers) or regression targets (floats) in y"
                )
            if np.issubdtype(self.y.dtype, np.floating):
                object.__setattr__(self, "y", self.y.astype(np.float32))

    @property
    def stacked(self) -> bool:
        """Several inputs, stacked on axis 1."""
        return len(self.inputs) > 1

    def _with(self, x: np.ndarray, y: np.ndarray | None, source: str | None = None) -> Dataset:
        return Dataset(x, y, self.source if source is None else source, self.labels, self.preprocess, self.inputs)

    def select(self, names: list[str]) -> Dataset:
        """The samples of the inputs ``names`` (some of ``inputs``), in that order."""
        if list(names) == list(self.inputs):
            return self
        index = [self.inputs.index(name) for name in names]
        x = self.x[:, index] if len(index) > 1 else (self.x[:, index[0]] if self.stacked else self.x)
        return Dataset(x, self.y, self.source, self.labels, self.preprocess, tuple(names))

    @property
    def is_indices(self) -> bool:
        """Samples are integer indices (token ids) that a model looks up, not values."""
        return self.x.dtype == np.int64

    @property
    def has_classes(self) -> bool:
        """Integer class labels (accuracy applies); float targets mean regression."""
        return self.y is not None and bool(np.issubdtype(self.y.dtype, np.integer))

    @property
    def has_targets(self) -> bool:
        """Float regression targets."""
        return self.y is not None and not self.has_classes

    def check_labels(self, outputs: int, role: str) -> None:
        """Class labels must index the model's outputs: refused before any work, not met later
        as an accuracy of 0 or an IndexError in the middle of a fine-tune."""
        if not self.has_classes or self.y is None or len(self.y) == 0:
            return
        low, high = int(self.y.min()), int(self.y.max())
        if low < 0 or high >= outputs:
            raise InputError(
                f"{role} labels of {self.source} run from {low} to {high}, but the model has {outputs} outputs",
                f"give class indices from 0 to {outputs - 1}, or float targets for regression",
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample of one input."""
        return tuple(int(d) for d in self.x.shape[2 if self.stacked else 1 :])

    def __len__(self) -> int:
        return len(self.x)

    def take(self, count: int) -> Dataset:
        """The first ``count`` samples (sources are already shuffled where that matters)."""
        if count >= len(self):
            return self
        y = None if self.y is None else self.y[:count]
        return self._with(self.x[:count], y)

    def split(self, count: int) -> tuple[Dataset, Dataset | None]:
        """The first ``count`` samples and the rest (None when nothing is left)."""
        if count >= len(self):
            return self, None
        y1 = None if self.y is None else self.y[:count]
        y2 = None if self.y is None else self.y[count:]
        first = self._with(self.x[:count], y1)
        rest = self._with(self.x[count:], y2, self.source + f"[{count}:]")
        return first, rest
