"""Hugging Face model folders (config.json, safetensors, tokenizer.json) written here with
transformers' save_pretrained from small random configurations: loaded without the hub,
captured from transformers' own eager BERT and DistilBERT code (its mask functions too),
compressed to both formats, and checked against transformers' outputs."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgetune.cli.main import run
from edgetune.data import load_dataset
from edgetune.data.text import TextSpec
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner

transformers = pytest.importorskip("transformers")
INTENTS = Path(__file__).parents[1] / "calibration" / "intents"
LENGTH = 16


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    shutil.copy(INTENTS / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=LENGTH, num_labels=5,
    )  # fmt: skip
    return _save(transformers.BertForSequenceClassification(config), tmp_path_factory.mktemp("hf") / "bert")


def _reference(folder: Path, x: np.ndarray) -> np.ndarray:
    """transformers' own outputs on the stacked inputs (eager attention)."""
    model = getattr(transformers, json.loads((folder / "config.json").read_text())["architectures"][0]).from_pretrained(
        str(folder), local_files_only=True, attn_implementation="eager"
    )
    names = ["input_ids", "attention_mask", "token_type_ids"][: x.shape[1]]
    with torch.no_grad():
        output = model.eval()(**{name: torch.from_numpy(x[:, i]) for i, name in enumerate(names)})
    return (output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state).numpy()


def test_a_bert_classifier_folder_compresses_with_its_own_tokenizer(
    bert_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = str(INTENTS / "train.jsonl"), str(INTENTS / "test.jsonl")
    argv = ["compress", str(bert_folder), "--calib", train, "--eval", test, "--seq-len", str(LENGTH)]
    assert run([*argv, "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["calibration"]["text"]["tokenizer"] == str(bert_folder / "tokenizer.json"), "the folder's own"
    assert "Hugging Face model folder" in report["model"]["note"]
    evaluation = report["evaluation"]
    assert evaluation["int8_vs_fp32"]["top1_agreement"] >= 0.95 and evaluation["tflite"]["top1_agreement_with_fp32"] >= 0.95
    fp32 = tmp_path / "out" / "model.fp32.onnx"
    assert [i.name for i in onnx.load(str(fp32)).graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    data = load_dataset(test, "test", text=TextSpec(str(bert_folder / "tokenizer.json"), LENGTH))
    expected = _reference(bert_folder, data.x[:64])
    assert (data.x[:64, 1] == 0).any(), "padded passages: the mask matters"
    np.testing.assert_allclose(OnnxRunner(fp32).run(data.x[:64]), expected, atol=1e-4)
    tflite = TfliteRunner((tmp_path / "out" / "model.tflite").read_bytes()).run(data.x[:64])
    assert np.mean(tflite.argmax(1) == expected.argmax(1)) >= 0.95


def test_a_distilbert_folder_without_token_types_gives_its_hidden_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=LENGTH)
    folder = _save(transformers.DistilBertModel(config), tmp_path / "distil")
    data = str(INTENTS / "test.jsonl")
    assert run(["compress", str(folder), "--calib", data, "--seq-len", str(LENGTH), "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["evaluation"]["tflite"]["vs_fp32"]["cosine_mean"] >= 0.99
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"], "DistilBERT takes no token types"
    x = load_dataset(data, "test", text=TextSpec(str(folder / "tokenizer.json"), LENGTH)).x[:32, :2]
    np.testing.assert_allclose(OnnxRunner(tmp_path / "out" / "model.fp32.onnx").run(x), _reference(folder, x), atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("remote-code", "names its own model code (auto_map in config.json), which needs trust_remote_code"),
        ("pickled", "holds pickled weights (pytorch_model.bin) and no .safetensors"),
        ("no-weights", "holds no weights (no .safetensors file)"),
    ],
)
def test_folders_edgetune_will_not_load_are_one_line(
    bert_folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], change: str, message: str
) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(bert_folder, folder)
    if change == "remote-code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "modeling_mine.MyModel"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "modeling_mine.py").write_text("raise SystemExit('remote code ran')\n")
    else:
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
        if change == "pickled":
            (folder / "pytorch_model.bin").write_bytes(b"not read")
    capfd.readouterr()
    argv = ["compress", str(folder), "--calib", str(INTENTS / "test.jsonl"), "--seq-len", str(LENGTH), "-o", str(tmp_path / "out")]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_sentence_transformers_folder_gives_its_pooled_normalized_embedding(tmp_path: Path) -> None:
    """modules.json, 1_Pooling/config.json (mean) and a Normalize module, read as JSON: the
    model returns sentence-transformers' embedding, the masked mean of the last hidden state,
    L2-normalized."""
    from edgetune.capture import capture
    from edgetune.capture.hf import load_hf_folder
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, max_position_embeddings=LENGTH
    )
    folder = _save(transformers.BertModel(config, add_pooling_layer=False), tmp_path / "sentence")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    x = load_dataset(str(INTENTS / "test.jsonl"), "test", text=TextSpec(str(folder / "tokenizer.json"), LENGTH)).x[:16]
    hidden = torch.from_numpy(_reference(folder, x))
    mask = torch.from_numpy(x[:, 1]).unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    model = load_hf_folder(folder)
    graph = capture(model, (LENGTH,), "int64", ("input_ids", "attention_mask", "token_type_ids"))
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, atol=1e-5)


SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
ARCHITECTURES = {
    # RoBERTa and MPNet count position ids from the ids (cumsum of the non-padding tokens)
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", {"pad_token_id": 1}),
    "mpnet": ("MPNetConfig", "MPNetModel", {}),
    # ALBERT writes the tanh GELU out (x ** 3); ELECTRA and MobileBERT project their embeddings
    "albert": ("AlbertConfig", "AlbertModel", {"embedding_size": 16}),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {"embedding_size": 16}),
    "mobilebert": ("MobileBertConfig", "MobileBertModel", {"embedding_size": 16, "intra_bottleneck_size": 16, "true_hidden_size": 16}),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_other_encoder_families_capture_exactly_and_compress(name: str, tmp_path: Path) -> None:
    from edgetune.capture import capture
    from edgetune.capture.hf import load_hf_folder
    from edgetune.export.onnx.writer import write_onnx
    from edgetune.export.tflite import write_tflite
    from edgetune.ir.torch_exec import GraphRunner, run_batches
    from edgetune.quantize import QuantConfig, calibrate

    config_class, model_class, extra = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**SMALL, max_position_embeddings=40, **extra)
    folder = _save(getattr(transformers, model_class)(config), tmp_path / name)
    model = load_hf_folder(folder)
    names = tuple(inspect.signature(model.forward).parameters)
    x = load_dataset(str(INTENTS / "test.jsonl"), "test", text=TextSpec(str(folder / "tokenizer.json"), LENGTH)).x[:48]
    x[:, 0] = np.minimum(x[:, 0], SMALL["vocab_size"] - 1)  # ids within the small vocabulary
    x = x[:, : len(names)]
    graph = capture(model, (LENGTH,), "int64", names)
    expected = _reference(folder, x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, atol=1e-4)
    calibrate(graph, x, QuantConfig())
    flat = expected.reshape(len(expected), -1)
    for out in (OnnxRunner(write_onnx(graph, quantized=True)).run(x), TfliteRunner(write_tflite(graph, quantized=True)).run(x)):
        cosine = (
            np.sum(out.reshape(len(out), -1) * flat, 1) / np.linalg.norm(out.reshape(len(out), -1), axis=1) / np.linalg.norm(flat, axis=1)
        )
        assert cosine.mean() >= 0.99, name
