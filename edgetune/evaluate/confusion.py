"""The confusion matrix as a picture: true classes down, predicted classes across, each row
shaded by the share of that class's samples (so rare classes read as clearly as common ones)."""

from __future__ import annotations

import io

import numpy as np


def confusion_png(matrix: np.ndarray, names: list[str], title: str) -> bytes:
    from edgetune.plotting import pyplot

    plt = pyplot("the confusion matrix plot")
    classes = len(matrix)
    side = min(max(4.0, 0.45 * classes + 2.0), 16.0)
    figure, axis = plt.subplots(figsize=(side, side), dpi=100)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(classes)
    axis.set_xticks(ticks, names, rotation=45 if max(map(len, names), default=0) > 3 else 0, ha="right" if classes > 10 else "center")
    axis.set_yticks(ticks, names)
    if classes <= 30:  # counts in the cells while they can be read
        for row in range(classes):
            for column in range(classes):
                if matrix[row, column]:
                    dark = shares[row, column] > 0.5
                    axis.text(
                        column, row, str(matrix[row, column]), ha="center", va="center", fontsize=8, color="white" if dark else "black"
                    )
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title, fontsize=10, pad=12)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
