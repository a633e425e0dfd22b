""".onnx files of token models: BERT-shaped encoders exported by PyTorch's TorchScript exporter
(the tests' plain-torch BERT at opset 17, and at opset 14 where LayerNorm is spelt out) and by
transformers' own BERT and DistilBERT code (its mask functions: Range, And, a per-example
Gather of the flattened mask, Where). Each imported graph is checked against ONNX Runtime on
the original file, and compressed from ids or from text to both int8 formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from text_encoder import bert, bert_classifier

from edgetune.capture.onnx_import import import_onnx
from edgetune.cli.main import run
from edgetune.evaluate.metrics import cosines, sqnr_db
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.export.tflite import write_tflite
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.quantize.calibrate import calibrate
from edgetune.quantize.config import QuantConfig

LENGTH = 16
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
INTENTS = Path(__file__).parents[1] / "calibration" / "intents"


def _export(model: torch.nn.Module, path: Path, inputs: int, opset: int = 17) -> Path:
    example = tuple(torch.zeros(1, LENGTH, dtype=torch.long) for _ in range(inputs))
    axes = {name: {0: "batch", 1: "steps"} for name in NAMES[:inputs]}
    torch.onnx.export(model.eval(), example, str(path), dynamo=False, opset_version=opset, input_names=NAMES[:inputs], dynamic_axes=axes)
    return path


def _tokens(count: int, seed: int, vocab: int = 64) -> np.ndarray:
    """[count, 3, LENGTH]: ids, a mask with 4 to LENGTH real tokens, token types 0 then 1."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (count, LENGTH))
    real = rng.integers(4, LENGTH + 1, count)
    mask = (np.arange(LENGTH)[None] < real[:, None]).astype(np.int64)
    types = (np.arange(LENGTH)[None] >= real[:, None] // 2).astype(np.int64) * mask
    return np.stack([ids, mask, types], axis=1).astype(np.int64)


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {name: x[:, i] for i, name in enumerate(names)})[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_text")
    return {
        "sentence": _export(bert(), folder / "sentence.onnx", 3),  # masked mean pooling, F.normalize
        "classifier14": _export(bert_classifier(), folder / "classifier14.onnx", 2, opset=14),  # LayerNorm spelt out
    }


@pytest.mark.parametrize("name", ["sentence", "classifier14"])
def test_the_imported_graph_computes_what_the_file_does(exported: dict[str, Path], name: str) -> None:
    path = exported[name]
    inputs = len(onnx.load(str(path)).graph.input)
    graph = import_onnx(path, (LENGTH,))
    assert graph.inputs == NAMES[:inputs] and all(graph.tensors[n].is_integer for n in graph.inputs)
    ops = {node.op for node in graph.nodes}
    assert {"gather", "layer_norm", "gelu", "softmax", "cast"} <= ops
    x = _tokens(24, 1)[:, :inputs]
    np.testing.assert_allclose(run_batches(GraphRunner(graph, quantized=False), x), _onnxruntime(path, x), rtol=1e-4, atol=1e-5)


def test_the_imported_inputs_follow_the_data_order(exported: dict[str, Path]) -> None:
    graph = import_onnx(exported["sentence"], (LENGTH,), ("attention_mask", "input_ids", "token_type_ids"))
    assert graph.inputs == ["attention_mask", "input_ids", "token_type_ids"]
    x = _tokens(8, 2)
    swapped = x[:, [1, 0, 2]]
    np.testing.assert_allclose(run_batches(GraphRunner(graph, quantized=False), swapped), _onnxruntime(exported["sentence"], x), atol=1e-5)


def test_an_onnx_sentence_encoder_compresses_from_ids(exported: dict[str, Path], tmp_path: Path) -> None:
    """Both int8 artifacts keep the three named integer inputs, agree with each other, stay
    close to the file, and ignore what sits under the padding."""
    x = _tokens(64, 0)
    np.savez(tmp_path / "calib.npz", **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    assert run(["compress", str(exported["sentence"]), "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--quiet"]) == 0
    onnx_int8 = OnnxRunner((out / "model.onnx").read_bytes())
    tflite = TfliteRunner((out / "model.tflite").read_bytes())
    assert onnx_int8.input_names == NAMES and tflite.input_names == NAMES
    check = _tokens(32, 3)
    reference, ours = _onnxruntime(exported["sentence"], check), onnx_int8.run(check)
    assert cosines(reference, ours).mean() > 0.999
    assert sqnr_db(ours, tflite.run(check)) > 35
    noisy = check.copy()
    noisy[:, 0] = np.where(check[:, 1] == 1, check[:, 0], (check[:, 0] + 7) % 64)  # other ids under the padding
    np.testing.assert_allclose(onnx_int8.run(noisy), ours, atol=1e-6)
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["stream"]["float_ops"] > 0


def test_an_onnx_file_refuses_data_that_does_not_fit(exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = _tokens(16, 0)
    np.savez(tmp_path / "renamed.npz", ids=x[:, 0], mask=x[:, 1], types=x[:, 2])
    np.savez(tmp_path / "floats.npz", **{name: x[:, i].astype(np.float32) for i, name in enumerate(NAMES)})
    for data, words in (("renamed.npz", "input"), ("floats.npz", "integer")):
        capsys.readouterr()
        out = tmp_path / f"out_{data}"
        code = run(["compress", str(exported["sentence"]), "--calib", str(tmp_path / data), "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
        assert not out.exists()


transformers = pytest.importorskip("transformers")


class _Logits(torch.nn.Module):
    """transformers' model called with keywords, its logits or last hidden state out (as a
    user's export script writes it)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(**dict(zip(self.names, inputs)))
        return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hf_onnx")
    torch.manual_seed(0)
    small = {"vocab_size": 128, "max_position_embeddings": 64, "attn_implementation": "eager"}
    bert_config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=5, **small
    )
    distil_config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)
    bert_model = _Logits(transformers.BertForSequenceClassification(bert_config), NAMES)
    distil_model = _Logits(transformers.DistilBertModel(distil_config), NAMES[:2])
    return {"bert": _export(bert_model, folder / "bert.onnx", 3), "distilbert": _export(distil_model, folder / "distilbert.onnx", 2)}


@pytest.mark.parametrize("name", ["bert", "distilbert"])
def test_transformers_exports_import_with_their_mask_functions(hf_exports: dict[str, Path], name: str) -> None:
    path = hf_exports[name]
    graph = import_onnx(path, (LENGTH,))
    x = _tokens(16, 4, vocab=128)[:, : len(graph.inputs)]
    np.testing.assert_allclose(run_batches(GraphRunner(graph, quantized=False), x), _onnxruntime(path, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beside", [False, True], ids=["--tokenizer", "tokenizer.json beside"])
def test_a_transformers_export_compresses_from_text(hf_exports: dict[str, Path], tmp_path: Path, beside: bool) -> None:
    """A BERT classifier's .onnx with its tokenizer (given, or in the file's folder as optimum
    lays an export out): jsonl passages in, both int8 files out, evaluated on labelled text."""
    model, out = tmp_path / "export" / "model.onnx", tmp_path / "out"
    model.parent.mkdir()
    shutil.copy(hf_exports["bert"], model)
    argv = ["compress", str(model), "--calib", str(INTENTS / "train.jsonl"), "--eval", str(INTENTS / "test.jsonl")]
    if beside:
        shutil.copy(INTENTS / "tokenizer.json", model.parent / "tokenizer.json")
    else:
        argv += ["--tokenizer", str(INTENTS / "tokenizer.json")]
    assert run([*argv, "--seq-len", str(LENGTH), "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    evaluation = report["evaluation"]
    assert evaluation["int8_vs_fp32"]["top1_agreement"] >= 0.9
    assert evaluation["tflite"]["top1_agreement_with_onnx_int8"] >= 0.95
    assert OnnxRunner((out / "model.onnx").read_bytes()).input_names == NAMES


class _TwoMasks(torch.nn.Module):
    """Attention over tokens that are both unpadded and not id 0: two computed masks combined
    with ``&`` (the padding mask and a mask from the ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = bert()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.bool() & (input_ids != 0)
        return self.inner(input_ids, keep.long())


def test_two_computed_masks_combined_with_and(tmp_path: Path) -> None:
    """Captured from PyTorch and imported from its .onnx export alike: the conjunction is the
    product of the 0/1 masks, and both graphs compute what the model does."""
    from edgetune.capture import capture

    torch.manual_seed(0)
    model = _TwoMasks().eval()
    x = _tokens(16, 5)[:, :2]
    x[:, 0, 1] = 0  # id 0 inside every passage
    with torch.no_grad():
        expected = model(*(torch.from_numpy(x[:, i]) for i in range(2))).numpy()
    captured = capture(model, (LENGTH,), "int64", tuple(NAMES[:2]))
    imported = import_onnx(_export(model, tmp_path / "two_masks.onnx", 2), (LENGTH,))
    for graph in (captured, imported):
        assert any(node.op == "mul" and node.attrs.get("integer") for node in graph.nodes)
        np.testing.assert_allclose(run_batches(GraphRunner(graph, quantized=False), x), expected, rtol=1e-4, atol=1e-5)
    calibrate(imported, _tokens(32, 6)[:, :2], QuantConfig(samples=32))
    onnx_int8 = OnnxRunner(write_onnx(imported, quantized=True)).run(x)
    assert cosines(expected, onnx_int8).mean() > 0.999
    assert sqnr_db(onnx_int8, TfliteRunner(write_tflite(imported)).run(x)) > 35


def test_edgetunes_own_fp32_file_imports_again(tmp_path: Path) -> None:
    """The fp32 ONNX file compress writes for a text model (linear layers over tokens as
    reshape, Gemm, reshape; the masked mean's count bounded by Max; F.normalize's ReduceL2
    and Max) is a model compress takes: a fine-tuned model is compressed further that way."""
    (tmp_path / "encoder.py").write_text("from text_encoder import bert as model\n")
    x = _tokens(32, 0)
    np.savez(tmp_path / "calib.npz", **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    assert run(["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--quiet"]) == 0
    fp32 = out / "model.fp32.onnx"
    graph = import_onnx(fp32, (LENGTH,))
    check = _tokens(8, 1)
    np.testing.assert_allclose(run_batches(GraphRunner(graph, quantized=False), check), _onnxruntime(fp32, check), rtol=1e-4, atol=1e-5)
    assert sum(node.op == "reshape" for node in graph.nodes) < 12  # no reshape around each linear layer
