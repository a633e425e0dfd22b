"""Per-class accuracy and precision, and the confusion matrix, from ``edgetune eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetune.cli.main import run
from edgetune.evaluate.metrics import confusion_matrix, per_class


def test_the_matrix_and_the_per_class_figures_count_what_they_say() -> None:
    logits = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]]  # predictions 0 0 1 2 2 2
    labels = np.array([0, 1, 1, 2, 2, 0])
    matrix = confusion_matrix(logits, labels)
    assert matrix.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    rows = per_class(matrix, ("cat", "dog", "eel"))
    assert [(r["name"], r["samples"], r["accuracy"], r["precision"]) for r in rows] == [
        ("cat", 2, 0.5, 0.5),
        ("dog", 2, 0.5, 1.0),
        ("eel", 2, 1.0, 0.6667),
    ]
    assert per_class(confusion_matrix(np.eye(3)[[0]], np.array([0])))[1]["accuracy"] is None  # no samples: no figure


def test_eval_reports_classes_and_plots_the_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path) -> None:
    artifact = str(digits_out / "model.tflite")
    assert run(["eval", artifact, "--data", "digits:test", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    counts = np.array(doc["confusion_matrix"]["counts"])
    assert counts.shape == (10, 10) and counts.sum() == doc["samples"]
    assert np.trace(counts) / counts.sum() == pytest.approx(doc["accuracy"])
    assert [row["samples"] for row in doc["per_class"]] == counts.sum(axis=1).tolist()

    assert run(["eval", artifact, "--data", "digits:test", "--plot", str(tmp_path / "cm.png")]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" in text and f"wrote {tmp_path / 'cm.png'}" in text
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_without_labels_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str], digits_out: Path) -> None:
    from edgetune.data import load_dataset

    np.savez(tmp_path / "x.npz", x=load_dataset("digits", "test").x[:20])
    argv = ["eval", str(digits_out / "model.onnx"), "--data", str(tmp_path / "x.npz"), "--plot", str(tmp_path / "cm.png")]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class labels" in err[0] and not (tmp_path / "cm.png").exists()
