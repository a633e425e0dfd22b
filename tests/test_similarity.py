"""Similarity pairs for a bi-encoder (edgetune/finetune/similarity.py): ``--task embed`` on
.jsonl records with a ``text_pair`` encodes each side alone, trains the embedding with CoSENT
(scored pairs) or in-batch negatives (unscored ones), and the evaluation scores the pairs with
every artifact: Spearman of cosines and scores, or recall at 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_inputs import FILLER, TOPICS

from edgetune.cli.main import run
from edgetune.data import load_dataset
from edgetune.data.text import TextSpec
from edgetune.errors import InputError
from edgetune.finetune.similarity import cosent_loss, in_batch_loss, pair_score, ranks, spearman

LENGTH = 16  # text_encoder's positions


def _side(rng: np.random.Generator, topic: int) -> str:
    return " ".join(str(rng.choice(TOPICS[topic])) if rng.random() < 0.4 else str(rng.choice(FILLER)) for _ in range(rng.integers(4, 14)))


def _pairs(path: Path, count: int, seed: int, scored: bool = True) -> None:
    """Pairs of passages; the score is 1 for one topic, 0.5 for neighbouring topics (0-1 and
    2-3), else 0. Unscored pairs are all of one topic (positives)."""
    rng, lines = np.random.default_rng(seed), []
    for _ in range(count):
        first = int(rng.integers(0, 4))
        second = first if not scored or rng.random() < 0.4 else int(rng.integers(0, 4))
        record = {"text": _side(rng, first), "text_pair": _side(rng, second)}
        if scored:
            record["label"] = 1.0 if first == second else 0.5 if first // 2 == second // 2 else 0.0
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scored and unscored pairs, a word-level tokenizer trained on them, and the tests' sentence encoder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("pairs")
    _pairs(folder / "train.jsonl", 320, 0)
    _pairs(folder / "test.jsonl", 160, 1)
    _pairs(folder / "positives.jsonl", 320, 2, scored=False)
    _pairs(folder / "positives_test.jsonl", 64, 3, scored=False)
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    words = folder / "words.txt"
    words.write_text(" ".join(w for topic in TOPICS for w in topic) + " " + " ".join(FILLER) + "\n")
    tokenizer.train([str(words)], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "encoder.py").write_text("from text_encoder import classifier, sentence\nfrom test_text_head import hidden\n")
    return folder


def test_ranks_and_spearman_handle_ties() -> None:
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    values = np.random.default_rng(0).standard_normal(50)
    assert spearman(values, np.exp(values)) == pytest.approx(1.0)
    assert spearman(values, -values) == pytest.approx(-1.0)
    binary = (values > 0).astype(np.float64)  # 0/1 labels: most ranks tied
    assert 0.5 < spearman(values, binary) < 1.0


def test_the_pair_losses_prefer_the_right_order() -> None:
    torch.manual_seed(0)
    anchor = torch.randn(6, 8)
    scores = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    close = anchor + 0.1 * torch.randn(6, 8) * torch.arange(6)[:, None]  # farther as the score falls
    reverse = anchor + 0.1 * torch.randn(6, 8) * torch.arange(5, -1, -1)[:, None]
    assert cosent_loss(anchor, close, scores) < cosent_loss(anchor, reverse, scores)
    assert in_batch_loss(anchor, anchor + 0.01 * torch.randn(6, 8)) < in_batch_loss(anchor, torch.randn(6, 8))
    first, second = anchor.numpy(), close.numpy()
    assert pair_score(first, second, scores.numpy())[0] > 0.8
    assert pair_score(first, second, None)[0] == 1.0, "each side's nearest other side is its own pair"


def test_separate_pairs_load_each_side_alone(pair_files: Path) -> None:
    spec = TextSpec(str(pair_files / "tokenizer.json"), LENGTH, "separate")
    data = load_dataset(str(pair_files / "train.jsonl"), "train", text=spec)
    assert data.pair is not None and data.pair.shape == data.x.shape == (320, 3, LENGTH)
    assert data.y is not None and data.y.dtype == np.float32 and set(np.unique(data.y)) == {0.0, 0.5, 1.0}
    assert (data.x[:, 2] == 0).all() and (data.pair[:, 2] == 0).all(), "each side is segment 0: encoded alone"
    assert data.preprocess["text"]["passages"] == 640 and data.preprocess["text"]["pairs"] == "separate"
    joined = load_dataset(str(pair_files / "train.jsonl"), "train", text=TextSpec(spec.tokenizer, LENGTH))
    assert joined.pair is None and (joined.x[:, 2] == 1).any(), "a cross-encoder reads both sides in one sequence"
    both = data.sides()
    assert len(both) == 640 and both.y is None and both.pair is None
    first, rest = data.split(100)
    assert rest is not None and first.pair is not None and np.array_equal(rest.pair, data.pair[100:])
    (pair_files / "bad.jsonl").write_text('{"text": "a", "text_pair": "b", "label": 1}\n{"text": "a", "text_pair": "b", "label": "high"}\n')
    with pytest.raises(InputError, match="bad.jsonl, line 2 has the label 'high'"):
        load_dataset(str(pair_files / "bad.jsonl"), "train", text=spec)


def test_a_fraction_makes_labels_targets_and_a_whole_float_stays_a_class(tmp_path: Path) -> None:
    from edgetune.data.text import read_passages

    for name, labels, scores in (("classes.jsonl", [0, 2.0, 1], False), ("targets.jsonl", [0.5, 1, 0], True)):
        (tmp_path / name).write_text("".join(json.dumps({"text": "a b", "label": label}) + "\n" for label in labels))
        assert read_passages(tmp_path / name).scores is scores
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": -1.0}\n')
    with pytest.raises(InputError, match="bad.jsonl, line 2 has the label -1.0"):
        read_passages(tmp_path / "bad.jsonl")


def _finetune(pair_files: Path, out: Path, train: str, test: str, *extra: str) -> list[str]:
    argv = ["finetune", f"{pair_files / 'encoder.py'}:sentence", "--train", str(pair_files / train), "--eval", str(pair_files / test)]
    argv += ["--tokenizer", str(pair_files / "tokenizer.json"), "--seq-len", str(LENGTH), "--task", "embed"]
    return [*argv, "--finetune", "150steps", "-o", str(out), "--quiet", "--json", *extra]


def test_scored_pairs_fine_tune_a_bi_encoder_into_both_artifacts(
    pair_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(_finetune(pair_files, tmp_path / "out", "train.jsonl", "test.jsonl")) == 0
    report = json.loads(capsys.readouterr().out)
    tuned = report["finetune"]
    assert tuned["task"] == "similarity" and "Spearman" in tuned["validation"]["metric"]
    assert tuned["metric_best"] > tuned["metric_before"] + 0.2, tuned
    similarity = report["evaluation"]["similarity"]
    assert similarity["pairs"] == 160 and similarity["metric"] == "spearman"
    assert similarity["fp32"]["spearman"] > similarity["original"]["spearman"] + 0.2, similarity
    for artifact in ("onnx_int8", "tflite"):
        assert abs(similarity[artifact]["spearman"] - similarity["fp32"]["spearman"]) < 0.05, similarity
    assert report["data"]["calibration"]["samples"] == 640, "both sides of every pair calibrate"
    test = str(pair_files / "test.jsonl")
    argv = ["eval", str(tmp_path / "out" / "model.tflite"), "--data", test, "--tokenizer", str(pair_files / "tokenizer.json")]
    argv += ["--seq-len", str(LENGTH), "--pairs", "separate", "--reference", str(tmp_path / "out" / "model.fp32.onnx"), "--json"]
    assert run(argv) == 0
    alone = json.loads(capsys.readouterr().out)["similarity"]
    assert alone["pairs"] == 160 and alone["artifact"]["spearman"] == pytest.approx(similarity["tflite"]["spearman"], abs=1e-4)
    assert alone["reference"]["spearman"] == pytest.approx(similarity["fp32"]["spearman"], abs=1e-4)
    replay = tmp_path / "replay"
    assert run(["compress", "--recipe", str(tmp_path / "out" / "recipe.toml"), "-o", str(replay), "--quiet"]) == 0
    for name in ("model.onnx", "model.tflite"):
        assert (replay / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_unscored_pairs_train_with_in_batch_negatives(pair_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_finetune(pair_files, tmp_path / "out", "positives.jsonl", "positives_test.jsonl", "--distill-weight", "0")) == 0
    report = json.loads(capsys.readouterr().out)
    tuned, similarity = report["finetune"], report["evaluation"]["similarity"]
    assert tuned["task"] == "similarity" and "recall" in tuned["validation"]["metric"]
    assert similarity["metric"] == "recall_at_1" and similarity["fp32"]["recall_at_1"] > similarity["original"]["recall_at_1"]


@pytest.mark.parametrize("names", [("input_ids", "attention_mask", "token_type_ids"), ("input_ids",)])
def test_pooling_is_the_masked_mean_or_the_first_token(names: tuple[str, ...]) -> None:
    """Hidden states become one embedding: the mean under attention_mask when the model takes
    one (as sentence-transformers pools), else the first token; L2-normalized either way."""
    from test_onnx_text_import import _tokens
    from test_text_head import hidden

    from edgetune.capture import capture
    from edgetune.finetune.head import add_pooling
    from edgetune.ir.torch_exec import GraphRunner

    model: torch.nn.Module = hidden()
    x = torch.from_numpy(_tokens(8, 0))
    if names == ("input_ids",):  # a token model without a mask: its first token
        torch.manual_seed(0)
        model, x = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 16)), x[:, 0]
    graph = capture(model, (LENGTH,), "int64", names if len(names) > 1 else ())
    block = add_pooling(graph)
    with torch.no_grad():
        states = model(*(x[:, i] for i in range(3))) if len(names) > 1 else model(x)
        mask = x[:, 1, :, None].float() if len(names) > 1 else None
        pooled = (states * mask).sum(1) / mask.sum(1) if mask is not None else states[:, 0]
        expected = torch.nn.functional.normalize(pooled, dim=-1)
        got = GraphRunner(graph)(x)
    assert block["pooling"].startswith("the mean" if len(names) > 1 else "the first token")
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_hidden_states_get_a_pooled_embedding(pair_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A BERT without pooling ([batch, tokens, features], three inputs) trains and ships its
    first token's L2-normalized state."""
    argv = _finetune(pair_files, tmp_path / "out", "train.jsonl", "test.jsonl", "--finetune", "400steps")  # its [CLS] starts random
    argv[1] = f"{pair_files / 'encoder.py'}:hidden"
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["head_added"]["pooling"] == "the mean of the tokens' hidden states under attention_mask, L2-normalized"
    similarity = report["evaluation"]["similarity"]
    assert similarity["fp32"]["spearman"] > similarity["original"]["spearman"] + 0.3, similarity
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    data = load_dataset(str(pair_files / "test.jsonl"), "test", text=TextSpec(str(pair_files / "tokenizer.json"), LENGTH, "separate"))
    embedding = TfliteRunner((tmp_path / "out" / "model.tflite").read_bytes()).run(data.x[:8])
    assert embedding.shape == (8, 32) and np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=0.02)


def test_pruned_pairs_recover_and_a_compressed_model_trains_on_them_with_qat(
    pair_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """compress --prune with --task embed recovers the pruned bi-encoder on the pairs, by
    distillation from the unpruned one; finetune on its model.edgetune goes on with QAT."""
    argv = _finetune(pair_files, tmp_path / "pruned", "train.jsonl", "test.jsonl", "--prune", "channel:0.5")
    argv[0] = "compress"
    argv += ["--calib", str(pair_files / "train.jsonl")]
    assert run(argv) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["pruning"]["macs"]["ratio"] < 0.7 and pruned["finetune"]["task"] == "similarity"
    argv = _finetune(pair_files, tmp_path / "qat", "train.jsonl", "test.jsonl", "--finetune", "50steps")
    argv[1] = str(tmp_path / "pruned" / "model.edgetune")
    assert run(argv) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["finetune"]["config"]["qat"] and tuned["finetune"]["task"] == "similarity"
    similarity = tuned["evaluation"]["similarity"]
    assert similarity["tflite"]["spearman"] > pruned["evaluation"]["similarity"]["original"]["spearman"] + 0.2, similarity


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("classifier", [], "similarity pairs train an embedding, and the model's output [1, 3] is no embedding"),
        ("sentence", ["--task", "classify", "--pairs", "separate"], "holds pairs whose sides are encoded apart"),
    ],
)
def test_pairs_on_the_wrong_model_or_task_are_one_line(
    pair_files: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], model: str, extra: list[str], message: str
) -> None:
    argv = _finetune(pair_files, tmp_path / "out", "train.jsonl", "test.jsonl", *extra)
    argv[1] = f"{pair_files / 'encoder.py'}:{model}"
    capfd.readouterr()
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
