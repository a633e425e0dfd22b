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


def sqnr_and_cosines(signal: np.ndarray, test: np.ndarray) -> tuple[float, np.ndarray]:
    """``sqnr_db`` and ``cosines`` of one pair of large tensors (every activation of a model)
    in one pass each over the products, summed in float64 without float64 copies of the
    tensors: about half the time of the two functions, equal to them within 1e-9 dB."""
    a = signal.reshape(len(signal), -1)
    b = test.reshape(len(test), -1)
    noise = a - b
    signal_sq = np.einsum("ij,ij->i", a, a, dtype=np.float64)
    test_sq = np.einsum("ij,ij->i", b, b, dtype=np.float64)
    noise_norm = math.sqrt(float(np.einsum("ij,ij->", noise, noise, dtype=np.float64)))
    signal_norm = math.sqrt(float(signal_sq.sum()))
    if noise_norm == 0.0:
        db = math.inf
    else:
        db = -math.inf if signal_norm == 0.0 else 20.0 * math.log10(signal_norm / noise_norm)
    norms = np.sqrt(signal_sq) * np.sqrt(test_sq)
    dots = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    return db, np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


NEIGHBOUR_SAMPLES = 4096  # nearest-neighbour agreement compares every pair: the first this many samples


def cosines(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Each sample's cosine similarity between its two outputs (flattened); 1 where both are zero."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = test.reshape(len(test), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)


def nearest_neighbours(outputs: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each sample, the index of the most cosine-similar other sample."""
    flat = outputs.reshape(len(outputs), -1).astype(np.float32)
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    nearest = np.empty(len(unit), np.int64)
    for start in range(0, len(unit), chunk):
        similarity = unit[start : start + chunk] @ unit.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        nearest[start : start + chunk] = similarity.argmax(1)
    return nearest


def embedding_agreement(reference: np.ndarray, test: np.ndarray) -> dict[str, float | int | None]:
    """How far outputs used as embeddings moved: the mean and 1st-percentile cosine to the
    reference, and, for vector outputs ([samples, features]), the share of samples whose
    nearest other sample stayed the same (on the first NEIGHBOUR_SAMPLES). An image-shaped
    output (a segmenter's) has no neighbours to speak of, and comparing every pair of them
    would cost most of a second in each evaluation."""
    values = cosines(reference, test)
    count = min(len(reference), NEIGHBOUR_SAMPLES)
    neighbours = None
    if count >= 3 and reference.ndim == 2:
        neighbours = float(np.mean(nearest_neighbours(reference[:count]) == nearest_neighbours(test[:count])))
    return {
        "cosine_mean": float(values.mean()),
        "cosine_p1": float(np.percentile(values, 1)),
        "neighbour_agreement": neighbours,
        "neighbour_samples": count,
    }


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
