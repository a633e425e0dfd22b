"""A classification head for encoders without one (edgetune/finetune/head.py): a sentence
encoder's L2-normalized embedding or a BERT's hidden states, given class labels and a
fine-tune, get a linear head initialized at the nearest class mean, trained, and written to
both int8 formats with one output per class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_text_import import NAMES, _tokens
from text_encoder import bert

from edgetune.cli.main import run
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner


class Hidden(torch.nn.Module):
    """The tests' BERT without pooling: hidden states [batch, tokens, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = bert()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        inner = self.inner
        x = inner.norm(inner.words(input_ids) + inner.positions(inner.position_ids) + inner.types(token_type_ids))
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in inner.layers:
            x = layer(x, bias)
        return x


def hidden() -> torch.nn.Module:
    torch.manual_seed(0)
    return Hidden()


def _labelled(path: Path, count: int, seed: int) -> None:
    """Three classes, each passage's ids drawn partly from its class's own range of the vocabulary."""
    x, rng = _tokens(count, seed), np.random.default_rng(seed + 100)
    y = rng.integers(0, 3, count)
    own = rng.integers(0, 20, x[:, 0].shape) + 20 * y[:, None]
    x[:, 0] = np.where(rng.random(x[:, 0].shape) < 0.6, own, x[:, 0])
    np.savez(path, y=y, **{name: x[:, i] for i, name in enumerate(NAMES)})


@pytest.mark.parametrize("model", ["bert", "hidden"])
def test_an_encoder_without_a_head_gets_one(model: str, tmp_path: Path) -> None:
    (tmp_path / "encoder.py").write_text("from text_encoder import bert\nfrom test_text_head import hidden\n")
    _labelled(tmp_path / "train.npz", 192, 0)
    _labelled(tmp_path / "test.npz", 64, 1)
    out = tmp_path / "out"
    argv = [
        "compress",
        f"{tmp_path / 'encoder.py'}:{model}",
        "--calib",
        str(tmp_path / "train.npz"),
        "--train",
        str(tmp_path / "train.npz"),
    ]
    argv += ["--eval", str(tmp_path / "test.npz"), "--finetune", "300steps", "-o", str(out), "--quiet"]
    assert run(argv) == 0
    report = json.loads((out / "report.json").read_text())
    head = report["model"]["head_added"]
    assert head["classes"] == 3 and head["init"] == "nearest class mean"
    assert head["features"] == ("the L2-normalized embedding" if model == "bert" else "the first token's hidden state")
    tuned = report["finetune"]
    assert tuned["task"] == "classification" and tuned["metric_best"] > tuned["metric_before"], tuned
    test = np.load(tmp_path / "test.npz")
    x = np.stack([test[name] for name in NAMES], axis=1)
    for runner in (OnnxRunner((out / "model.onnx").read_bytes()), TfliteRunner((out / "model.tflite").read_bytes())):
        logits = runner.run(x)
        assert logits.shape == (64, 3)
    assert report["evaluation"]["int8_accuracy"] > 0.6  # chance is a third


def test_an_encoder_with_a_head_keeps_it(tmp_path: Path) -> None:
    """A classifier's own outputs are its classes: no head is added."""
    (tmp_path / "encoder.py").write_text("from text_encoder import bert_classifier as model\n")
    _labelled(tmp_path / "train.npz", 64, 0)
    out = tmp_path / "out"
    argv = ["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "train.npz"), "--train", str(tmp_path / "train.npz")]
    assert run([*argv, "--finetune", "5steps", "-o", str(out), "--quiet"]) == 0
    assert "head_added" not in json.loads((out / "report.json").read_text())["model"]


def test_fewer_than_two_examples_per_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "encoder.py").write_text("from text_encoder import bert as model\n")
    x = _tokens(12, 0)
    np.savez(tmp_path / "few.npz", y=np.arange(12) % 8, **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    argv = ["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "few.npz"), "--train", str(tmp_path / "few.npz")]
    capsys.readouterr()
    assert run([*argv, "--finetune", "5steps", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "for 8 classes" in err[0] and "at least two examples per class" in err[0], err
    assert not out.exists()


def test_class_labels_give_an_embedding_no_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a fine-tune (so without a head), an L2-normalized output's top-1 against class
    labels means nothing: the report gives no accuracy and says why; cosine stays."""
    (tmp_path / "encoder.py").write_text("from text_encoder import bert\n")
    _labelled(tmp_path / "data.npz", 96, 0)
    argv = ["compress", f"{tmp_path / 'encoder.py'}:bert", "--calib", str(tmp_path / "data.npz"), "--eval", str(tmp_path / "data.npz")]
    assert run([*argv, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((tmp_path / "out" / "report.json").read_text())["evaluation"]
    assert "int8_accuracy" not in evaluation and "outputs an embedding, so its class labels give no accuracy" in evaluation["note"]
    assert "accuracy" not in printed.split("evaluated on")[1].split("time")[0] and "note: " in printed
    assert evaluation["int8_vs_fp32"]["cosine_mean"] > 0.9
