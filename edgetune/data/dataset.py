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

    ``pair`` holds the second passage of each sample of a similarity pair, encoded alone (a
    bi-encoder embeds each side on its own), shaped as ``x``; ``y`` is then the pair's score.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    labels: tuple[str, ...] = ()
    preprocess: dict[str, object] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    pair: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or len(self.x) == 0:
            raise InputError(f"data set {self.source} is empty", "give at least one sample")
        if self.pair is not None and self.pair.shape != self.x.shape:
            raise ValueError(f"the pairs' samples {list(self.pair.shape)} must match x's {list(self.x.shape)}")
        if self.stacked and (self.x.ndim < 3 or self.x.shape[1] != len(self.inputs)):
            raise ValueError(
                f"{len(self.inputs)} stacked inputs need samples of shape [N, {len(self.inputs)}, ...], not {list(self.x.shape)}"
            )
        if self.x.dtype in (np.int32, np.int64):  # token ids (images come as uint8, or floats)
            object.__setattr__(self, "x", self.x.astype(np.int64))
        elif self.x.dtype != np.float32:
            object.__setattr__(self, "x", self.x.astype(np.float32))
        if self.pair is not None:
            object.__setattr__(self, "pair", self.pair.astype(self.x.dtype))
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

    def _with(self, x: np.ndarray, y: np.ndarray | None, source: str | None = None, pair: np.ndarray | None = None) -> Dataset:
        return Dataset(x, y, self.source if source is None else source, self.labels, self.preprocess, self.inputs, pair)

    def subset(self, index: np.ndarray | slice, source: str | None = None) -> Dataset:
        """The samples at ``index`` (an index array or a slice), with their labels and pairs."""
        y = None if self.y is None else self.y[index]
        return self._with(self.x[index], y, source, None if self.pair is None else self.pair[index])

    def unlabelled(self) -> Dataset:
        return self._with(self.x, None, pair=self.pair)

    def sides(self) -> Dataset:
        """Similarity pairs as passages: both sides, one after the other, without scores (what
        calibration and agreement measure); other data as it is."""
        if self.pair is None:
            return self
        return Dataset(np.concatenate([self.x, self.pair]), None, self.source + " (both sides)", (), self.preprocess, self.inputs)

    def select(self, names: list[str]) -> Dataset:
        """The samples of the inputs ``names`` (some of ``inputs``), in that order."""
        if list(names) == list(self.inputs):
            return self
        index = [self.inputs.index(name) for name in names]

        def chosen(x: np.ndarray) -> np.ndarray:
            return x[:, index] if len(index) > 1 else (x[:, index[0]] if self.stacked else x)

        pair = None if self.pair is None else chosen(self.pair)
        return Dataset(chosen(self.x), self.y, self.source, self.labels, self.preprocess, tuple(names), pair)

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
        return self.subset(slice(0, count))

    def split(self, count: int) -> tuple[Dataset, Dataset | None]:
        """The first ``count`` samples and the rest (None when nothing is left)."""
        if count >= len(self):
            return self, None
        return self.subset(slice(0, count)), self.subset(slice(count, None), self.source + f"[{count}:]")
