"""N-way K-shot episodes from a labelled data set's classes.

An episode draws ``way`` classes, then ``shot`` support and ``query`` query examples of each,
and relabels the classes 0..way-1 in the order drawn: the model never learns which original
class sits behind a label, only how to tell the episode's classes apart from few examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetune.data import Dataset
from edgetune.errors import InputError


@dataclass(frozen=True)
class Episode:
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


@dataclass(frozen=True)
class ClassPool:
    """Examples by class: ``x`` and, per original label, the indices of its examples."""

    x: np.ndarray
    members: dict[int, np.ndarray]

    @property
    def classes(self) -> list[int]:
        return sorted(self.members)

    def episode(self, way: int, shot: int, query: int, rng: np.random.Generator) -> Episode:
        chosen = rng.choice(self.classes, size=way, replace=False)
        support, query_index, support_y, query_y = [], [], [], []
        for label, cls in enumerate(chosen):
            picked = rng.choice(self.members[int(cls)], size=shot + query, replace=False)
            support.append(picked[:shot])
            query_index.append(picked[shot:])
            support_y += [label] * shot
            query_y += [label] * query
        s, q = np.concatenate(support), np.concatenate(query_index)
        return Episode(self.x[s], np.asarray(support_y, np.int64), self.x[q], np.asarray(query_y, np.int64))


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """``0-5`` or ``0,2,4`` or ``0-3,7`` to class labels; None for every class."""
    if not text:
        return None
    labels: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            labels += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise InputError(f"classes {text!r} are not like 0-5 or 0,2,4", "give class labels as integers, ranges with -") from None
    return tuple(dict.fromkeys(labels))


def class_pool(data: Dataset, classes: tuple[int, ...] | None, way: int, need: int, option: str = "--classes") -> ClassPool:
    """The examples of ``classes`` (all of the data's classes when None), each class with at
    least ``need`` examples, and at least ``way`` classes."""
    if data.y is None or not data.has_classes:
        raise InputError(f"{data.source} has no class labels", "episodes need labelled data (integer classes)")
    labels = data.y.astype(np.int64)
    present = sorted(int(c) for c in np.unique(labels))
    wanted = list(classes) if classes is not None else present
    missing = [c for c in wanted if c not in present]
    if missing:
        raise InputError(f"class {missing[0]} of {option} has no example in {data.source}", f"pick classes among {_span(present)}")
    if len(wanted) < way:
        raise InputError(
            f"{data.source} has {len(wanted)} class(es) to draw from, fewer than --way {way}",
            f"lower --way to {len(wanted)} or give more classes",
        )
    members = {c: np.flatnonzero(labels == c) for c in wanted}
    for c, index in members.items():
        if len(index) < need:
            raise InputError(
                f"class {c} of {data.source} has {len(index)} example(s), fewer than the {need} an episode draws", "lower --shot or --query"
            )
    return ClassPool(data.x, members)


def split_pool(pool: ClassPool, share: float, keep: int, rng: np.random.Generator) -> tuple[ClassPool, ClassPool]:
    """Each class's examples cut in two: ``share`` of them (at least ``keep``, and leaving
    ``keep``) for validation episodes, the rest for training ones."""
    train, held = {}, {}
    for c, index in pool.members.items():
        order = rng.permutation(index)
        count = min(max(keep, round(len(order) * share)), len(order) - keep)
        if count < keep:  # too few to split: validation reuses the training examples
            train[c], held[c] = order, order
        else:
            train[c], held[c] = order[count:], order[:count]
    return ClassPool(pool.x, train), ClassPool(pool.x, held)


def _span(labels: list[int]) -> str:
    return f"{labels[0]}..{labels[-1]}" if labels == list(range(labels[0], labels[-1] + 1)) else ", ".join(map(str, labels))
