"""Models that take token ids: an int64 input looked up in an embedding table (``gather``),
captured, calibrated, written to both formats (ONNX int64 ids, TFLite int32 ids) and compressed
from the command line on .npz files of ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.data import load_dataset
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.export.tflite import write_tflite
from edgetune.ir.serialize import graph_from_bytes, graph_to_bytes
from edgetune.quantize import QuantConfig, calibrate

VOCAB, LENGTH, CLASSES = 64, 16, 4

MODEL_FILE = """
import torch
from torch import nn


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 24)
        self.conv = nn.Conv1d(24, 24, 3, padding=1)
        self.head = nn.Linear(24, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.embed(ids).transpose(1, 2)))
        return self.head(h.mean(2))


def build() -> nn.Module:
    torch.manual_seed(0)
    return TokenClassifier()
"""


class BagOfTokens(nn.Module):
    """An embedding, mean over the sequence, a classifier (fastText-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def _ids(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences whose class is the quarter of the vocabulary most of their tokens come from."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, count)
    x = rng.integers(0, VOCAB, (count, LENGTH))
    topical = rng.random((count, LENGTH)) < 0.6
    x[topical] = (y[:, None] * (VOCAB // CLASSES) + rng.integers(0, VOCAB // CLASSES, (count, LENGTH)))[topical]
    return x.astype(np.int64), y.astype(np.int64)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    (folder / "model.py").write_text(MODEL_FILE)
    for name, (count, seed) in {"train": (600, 0), "test": (300, 1)}.items():
        x, y = _ids(count, seed)
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return folder


def test_an_embedding_is_captured_as_a_lookup_of_integer_ids() -> None:
    torch.manual_seed(0)
    model = BagOfTokens().eval()
    graph = capture(model, (LENGTH,), "int64")
    assert graph.tensors[graph.inputs[0]].dtype == "int64" and graph.nodes[0].op == "gather"
    x, _ = _ids(32, 2)
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(OnnxRunner(write_onnx(graph, quantized=False)).run(x), expected, atol=1e-5)
    np.testing.assert_allclose(TfliteRunner(write_tflite(graph, quantized=False)).run(x), expected, atol=1e-5)
    again = graph_from_bytes(graph_to_bytes(graph))
    assert again.tensors[again.inputs[0]].dtype == "int64", "model.edgetune keeps the input's type"


@pytest.mark.parametrize("int8_io", [False, True], ids=["float-output", "int8-output"])
def test_int8_token_models_agree_across_runtimes(int8_io: bool) -> None:
    torch.manual_seed(0)
    model = BagOfTokens().eval()
    graph = capture(model, (LENGTH,), "int64")
    calib, _ = _ids(64, 3)
    calibrate(graph, calib, QuantConfig())
    table = graph.tensors[graph.nodes[0].inputs[1]]
    assert table.quant is not None and graph.tensors[graph.nodes[0].outputs[0]].quant.same_as(table.quant)  # type: ignore[union-attr]
    assert graph.tensors[graph.inputs[0]].quant is None, "ids are never quantized"
    x, _ = _ids(64, 4)
    onnx_blob, tflite_blob = write_onnx(graph, quantized=True, unsigned_activations=True), write_tflite(graph, int8_io=int8_io)
    ours, theirs = OnnxRunner(onnx_blob).run(x), TfliteRunner(tflite_blob).run(x)
    scale = float(graph.tensors[graph.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
    assert np.abs(ours - theirs).max() <= scale + 1e-6, "within one output step"
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.mean(ours.argmax(1) == expected.argmax(1)) >= 0.95
    assert onnx.load_from_string(onnx_blob).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    runner = TfliteRunner(tflite_blob)
    assert runner.input["dtype"] == np.int32


def test_compress_a_token_classifier_from_npz_ids(text_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, train, test = (str(text_files / name) for name in ("model.py:build", "train.npz", "test.npz"))
    argv = ["compress", model, "--calib", train, "--train", train, "--eval", test, "--finetune", "150steps"]
    assert run([*argv, "--prune", "channel:0.5", "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    evaluation = report["evaluation"]
    assert report["recovery"]["accuracy_after_recovery"] > report["recovery"]["accuracy_after_compression"] + 0.3
    assert evaluation["int8_accuracy"] >= 0.9 and evaluation["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99
    assert report["pruning"]["macs"]["ratio"] < 0.8, "the conv after the embedding lost channels"
    x = load_dataset(test, "test").x
    assert x.dtype == np.int64
    blob = (tmp_path / "out" / "model.tflite").read_bytes()
    assert b'"input": "int32 token ids"' in blob


def test_image_bytes_stay_values_and_bad_ids_are_one_line(text_files: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from edgetune.data import Dataset

    assert Dataset(np.zeros((2, 3, 4, 4), np.uint8), None, "images").x.dtype == np.float32, "uint8 images are values, not ids"
    x, y = _ids(20, 5)
    cases = {
        "past.npz": (x + VOCAB, "token ids of {} reach 127, but the model's embedding has 64 rows"),
        "negative.npz": (x - VOCAB, "holds negative token ids"),
        "floats.npz": (x.astype(np.float32), "the model looks up token ids (an embedding), but the data holds float samples"),
    }
    for name, (values, message) in cases.items():
        np.savez(tmp_path / name, x=values, y=y)
        capfd.readouterr()
        assert run(["compress", str(text_files / "model.py:build"), "--calib", str(tmp_path / name), "-o", str(tmp_path / "z")]) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("error: ") and message.format(tmp_path / name) in err and "\n" not in err, err
        assert not (tmp_path / "z").exists()


TOPICS = [
    ["goal", "match", "team", "score", "coach", "league"],
    ["stock", "market", "price", "bank", "trade", "fund"],
    ["rain", "storm", "wind", "cloud", "snow", "sun"],
    ["code", "python", "bug", "compile", "server", "test"],
]
FILLER = ["the", "a", "of", "and", "to", "in", "is", "was", "on", "it"]


def _passage(rng: np.random.Generator, topic: int) -> str:
    return " ".join(str(rng.choice(TOPICS[topic])) if rng.random() < 0.5 else str(rng.choice(FILLER)) for _ in range(rng.integers(4, 30)))


@pytest.fixture(scope="module")
def jsonl_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled passages on four topics, and a word-level tokenizer.json trained on them here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("jsonl")
    rng = np.random.default_rng(0)
    for name, count in (("train", 400), ("test", 200)):
        lines = []
        for _ in range(count):
            topic = int(rng.integers(0, 4))
            lines.append(json.dumps({"text": _passage(rng, topic), "label": topic}))
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train([str(folder / "train.jsonl")], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "model.py").write_text(MODEL_FILE)
    return folder


def test_compress_from_jsonl_passages_through_the_tokenizer(jsonl_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = {name: str(jsonl_files / name) for name in ("train.jsonl", "test.jsonl", "tokenizer.json")}
    argv = ["compress", str(jsonl_files / "model.py:build"), "--calib", f["train.jsonl"], "--train", f["train.jsonl"]]
    argv += ["--eval", f["test.jsonl"], "--tokenizer", f["tokenizer.json"], "--seq-len", "20", "--finetune", "150steps"]
    assert run([*argv, "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = report["data"]["evaluation"]["text"]
    lengths = [len(json.loads(line)["text"].split()) for line in Path(f["test.jsonl"]).read_text().splitlines() if line]
    assert text["passages"] == 200 and text["empty_lines"] == 1 and text["seq_len"] == 20
    assert text["truncated"] == sum(length > 20 for length in lengths), "a word is a token for this tokenizer"
    assert report["evaluation"]["int8_accuracy"] >= 0.8 and report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99
    recipe = (tmp_path / "out" / "recipe.toml").read_text()
    assert f'tokenizer = "{f["tokenizer.json"]}"' in recipe and "seq_len = 20" in recipe


def test_text_lines_that_are_empty_or_not_utf8_are_counted(jsonl_files: Path, tmp_path: Path) -> None:
    from edgetune.data.text import TextSpec

    (tmp_path / "passages.txt").write_bytes(b"the goal of the match\n\n  \nbad \xff bytes\n" + b"rain " * 30 + b"\n")
    data = load_dataset(str(tmp_path / "passages.txt"), "calibration", text=TextSpec(str(jsonl_files / "tokenizer.json"), 8))
    assert data.x.shape == (3, 3, 8) and data.x.dtype == np.int64 and data.y is None
    assert data.inputs == ("input_ids", "attention_mask", "token_type_ids")
    notes: dict = data.preprocess["text"]  # type: ignore[assignment, type-arg]
    counted = {name: notes[name] for name in ("passages", "truncated", "empty_lines", "invalid_utf8_lines")}
    assert counted == {"passages": 3, "truncated": 1, "empty_lines": 2, "invalid_utf8_lines": 1}
    ids, mask, types = data.x[0]
    assert (ids[5:] == 0).all() and (ids[:5] != 0).all(), "padded with the tokenizer's [PAD] id"
    assert mask.tolist() == [1] * 5 + [0] * 3 and not types.any(), "the mask marks the padding; one passage is one segment"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"text": "a goal"}\n', [], "is text, and no tokenizer is given; pass --tokenizer"),
        ('{"text": "a goal", "label": "sport"}\n', ["--tokenizer"], "has the label 'sport'; give every label as a class index"),
        ('{"text": "a goal"}\nnot json\n', ["--tokenizer"], "line 2 is not JSON"),
        ('{"text": 3}\n', ["--tokenizer"], 'line 1 has no "text" string'),
        ("\n\n", ["--tokenizer"], "holds no passage"),
        ('{"text": "a goal", "label": 0}\n\n{"text": "a pass"}\n', ["--tokenizer"], "line 3 has no label (1 of 2 records have one)"),
        ('{"text": "a goal", "label": 0}\n{"text": "a pass", "label": "sport"}\n', ["--tokenizer"], "line 2 has the label 'sport'"),
    ],
    ids=["no-tokenizer", "named-label", "not-json", "no-text", "empty", "missing-label", "named-label-line"],
)
def test_bad_text_data_is_one_line(
    jsonl_files: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], content: str, extra: list[str], message: str
) -> None:
    (tmp_path / "data.jsonl").write_text(content)
    options = [*extra, str(jsonl_files / "tokenizer.json")] if extra else []
    argv = ["compress", str(jsonl_files / "model.py:build"), "--calib", str(tmp_path / "data.jsonl"), *options]
    capfd.readouterr()
    assert run([*argv, "-o", str(tmp_path / "z")]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_few_shot_episodes_from_text(jsonl_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """meta-init draws episodes from labelled passages; adapt learns held-out topics from five each."""
    text = ["--tokenizer", str(jsonl_files / "tokenizer.json"), "--seq-len", "20", "--quiet", "--json"]
    argv = ["meta-init", str(jsonl_files / "model.py:build"), "--tasks", str(jsonl_files / "train.jsonl"), "--classes", "0,1"]
    assert run([*argv, "--way", "2", "--shot", "5", "--budget", "20steps", "-o", str(tmp_path / "meta"), *text]) == 0
    meta = json.loads(capsys.readouterr().out)["meta_init"]
    assert meta["classes"] == [0, 1] and meta["steps"] == 20
    test, train = str(jsonl_files / "test.jsonl"), str(jsonl_files / "train.jsonl")
    argv = ["adapt", str(tmp_path / "meta" / "meta.edgetune"), "--support", test, "--classes", "2,3", "--shot", "5"]
    assert run([*argv, "--eval", test, "--calib", train, "-o", str(tmp_path / "adapted"), *text]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapt"]["classes"] == [2, 3] and report["evaluation"]["agreement"] >= 0.98
    assert report["evaluation"]["samples"] == int(sum(json.loads(line)["label"] in (2, 3) for line in open(test) if line.strip())) - 10


def test_a_bert_shaped_encoder_on_token_ids_compresses_to_both_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Word and position embeddings (the position lookup folds to a constant), attention,
    LayerNorm, GELU, mean pooling and L2 normalization: a sentence encoder, judged as one."""
    import shutil

    shutil.copy(Path(__file__).with_name("text_encoder.py"), tmp_path / "encoder.py")
    x = np.random.default_rng(0).integers(0, 100, (200, 16))
    np.savez(tmp_path / "ids.npz", x=x)
    argv = ["compress", str(tmp_path / "encoder.py:sentence"), "--calib", str(tmp_path / "ids.npz"), "-o", str(tmp_path / "out")]
    assert run([*argv, "--quiet", "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)["evaluation"]
    onnx_side, tflite_side = evaluation["int8_vs_fp32"], evaluation["tflite"]["vs_fp32"]
    assert onnx_side["cosine_mean"] >= 0.995 and tflite_side["cosine_mean"] >= 0.995 and tflite_side["cosine_p1"] >= 0.99
    assert onnx_side["neighbour_agreement"] >= 0.8 and tflite_side["neighbour_agreement"] >= 0.8
    from edgetune.profile.ops import tflite_ops

    ops = [cost.op for cost in tflite_ops((tmp_path / "out" / "model.tflite").read_bytes()).ops]
    assert ops.count("GATHER") == 1, "only the word lookup reads the input; positions are a constant"


def test_embedding_agreement_measures_what_it_says() -> None:
    from edgetune.evaluate.metrics import embedding_agreement, nearest_neighbours

    points = np.asarray([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert list(nearest_neighbours(points)) == [1, 0, 3, 2]
    same = embedding_agreement(points, points)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["neighbour_agreement"] == 1.0
    swapped = embedding_agreement(points, points[:, ::-1])
    assert swapped["cosine_p1"] < 0.2 and swapped["neighbour_agreement"] == 1.0, "a rotation keeps the neighbours"


def test_a_compressed_token_model_checks_the_ids_it_recovers_on(
    text_files: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    model, train = str(text_files / "model.py:build"), str(text_files / "train.npz")
    assert run(["compress", model, "--calib", train, "-o", str(tmp_path / "c"), "--quiet"]) == 0
    x, y = _ids(20, 6)
    np.savez(tmp_path / "past.npz", x=x + VOCAB, y=y)
    capfd.readouterr()
    argv = ["compress", str(tmp_path / "c" / "model.edgetune"), "--train", str(tmp_path / "past.npz"), "--finetune", "5steps"]
    assert run([*argv, "-o", str(tmp_path / "r")]) == 2
    err = capfd.readouterr().err.strip()
    assert "training token ids of" in err and "but the model's embedding has 64 rows" in err and "\n" not in err, err
