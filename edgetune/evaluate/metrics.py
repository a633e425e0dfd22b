"""Metrics comparing model outputs with labels or with a reference."""

from __future__ import annotations

import math

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.reshape(len(logits), -1).argmax(axis=1) == labels))


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples whose top-1 class matches the reference's."""
    ours = logits.reshape(len(logits), -1).argmax(axis=1)
    theirs = reference.reshape(len(reference), -1).argmax(axis=1)
    return float(np.mean(ours == theirs))


def sqnr_db(signal: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 20 log10(||x|| / ||x - y||), in dB.

    Identical tensors give +inf (reported as such in JSON-safe form by callers).
    """
    reference = signal.astype(np.float64).ravel()
    noise = reference - test.astype(np.float64).ravel()
    noise_norm = float(np.linalg.norm(noise))
    signal_norm = float(np.linalg.norm(reference))
    if noise_norm == 0.0:
        return math.inf
    if signal_norm == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal_norm / noise_norm)


def finite_or_none(value: float) -> float | None:
    """JSON has no infinities: report them as null."""
    return value if math.isfinite(value) else None


def confusion_matrix(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts of (true class, predicted class), one row per true class, over the model's classes."""
    flat = logits.reshape(len(logits), -1)
    classes = flat.shape[1]
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), flat.argmax(axis=1)), 1)
    return matrix


def per_class(matrix: np.ndarray, names: tuple[str, ...] = ()) -> list[dict[str, object]]:
    """Each class's samples, accuracy (recall: its samples predicted right) and precision
    (its predictions that were right); None where a class has no samples or no predictions."""
    rows: list[dict[str, object]] = []
    for index in range(len(matrix)):
        samples, predicted, right = int(matrix[index].sum()), int(matrix[:, index].sum()), int(matrix[index, index])
        rows.append(
            {
                "class": index,
                "name": names[index] if index < len(names) else str(index),
                "samples": samples,
                "accuracy": round(right / samples, 4) if samples else None,
                "precision": round(right / predicted, 4) if predicted else None,
            }
        )
    return rows
