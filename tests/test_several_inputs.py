"""Models with several inputs: a BERT-style forward taking ``input_ids``, ``attention_mask`` and
``token_type_ids``, fed from an .npz of one array per argument or from text through a
tokenizer; captured with the mask's cast, written to both formats with one input per argument,
and run by both real runtimes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.evaluate.metrics import embedding_agreement
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.export.tflite import write_tflite
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.quantize import QuantConfig, calibrate

NAMES = ("input_ids", "attention_mask", "token_type_ids")
LENGTH = 16
WORDS = [f"w{i}" for i in range(40)]


def _batch(count: int, seed: int) -> np.ndarray:
    """Ids, a mask of 4 to 16 real tokens (the rest padding, id 0) and two segments, stacked."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 64, (count, LENGTH))
    mask = np.zeros((count, LENGTH), np.int64)
    for row, real in enumerate(rng.integers(4, LENGTH + 1, count)):
        mask[row, :real] = 1
    types = (np.arange(LENGTH)[None] >= LENGTH // 2).astype(np.int64).repeat(count, 0) * mask
    return np.stack([ids * mask, mask, types], axis=1)


def _torch(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(x[:, i]) for i in range(x.shape[1]))).numpy()


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    from text_encoder import bert

    return bert().eval()


def test_the_mask_is_captured_and_padding_changes_nothing(encoder: torch.nn.Module) -> None:
    graph = capture(encoder, (LENGTH,), "int64", NAMES)
    assert graph.inputs == list(NAMES) and all(graph.tensors[name].is_integer for name in NAMES)
    assert {node.op for node in graph.nodes} >= {"cast", "div", "gather"}
    x = _batch(32, 0)
    out = run_batches(GraphRunner(graph), x)
    np.testing.assert_allclose(out, _torch(encoder, x), atol=1e-5)
    junk = x.copy()
    junk[:, 0] = np.where(x[:, 1] == 1, x[:, 0], 63)  # other ids under the padding
    np.testing.assert_allclose(run_batches(GraphRunner(graph), junk), out, atol=1e-5)
    unmasked = x.copy()
    unmasked[:, 1] = 1
    assert np.abs(run_batches(GraphRunner(graph), unmasked) - out).max() > 1e-2, "the mask is read"


@pytest.mark.parametrize("style", ["4d", "distil"])
def test_masks_written_with_masked_fill_are_captured_and_stay_float(style: str) -> None:
    """Recent transformers' _prepare_4d_attention_mask (expand, invert, masked_fill where set)
    and DistilBERT's (mask == 0).view().expand_as(scores) with masked_fill: the same weights
    and outputs as the additive form; in int8 with min/max ranges and --stream off (every other
    tensor int8), the filled scores never get an int8 range."""
    from text_encoder import masked_fill_bert

    model = masked_fill_bert(style)
    graph = capture(model, (LENGTH,), "int64", NAMES[:2])
    assert {"compare", "expand"} <= {node.op for node in graph.nodes}
    x = _batch(64, 4)[:, :2]
    reference = _torch(model, x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), reference, atol=1e-5)
    calibrate(graph, x, QuantConfig(stream="off", method="minmax"))
    for blob, runner in ((write_onnx(graph, quantized=True), OnnxRunner), (write_tflite(graph, quantized=True), TfliteRunner)):
        assert embedding_agreement(reference, runner(blob).run(x))["cosine_mean"] >= 0.99  # type: ignore[operator]


@pytest.mark.parametrize("stream", ["split", "off"])
def test_int8_artifacts_take_one_input_per_argument_and_agree(encoder: torch.nn.Module, stream: str) -> None:
    graph = capture(encoder, (LENGTH,), "int64", NAMES)
    x = _batch(64, 1)
    reference = _torch(encoder, x)
    calibrate(graph, x, QuantConfig(stream=stream, method="minmax"))  # min/max: the range a mask's bias would wreck
    mask_ops = [node for node in graph.nodes if node.op == "cast"]
    assert mask_ops and all(node.attrs.get("precision") == "float" for node in mask_ops), "the mask stays float with --stream off too"
    onnx_bytes, tflite_bytes = write_onnx(graph, quantized=True), write_tflite(graph, quantized=True)
    model = onnx.load_from_string(onnx_bytes)
    assert [i.name for i in model.graph.input] == list(NAMES)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    tflite_runner = TfliteRunner(tflite_bytes)
    assert tflite_runner.input_names == list(NAMES) and all(d["dtype"] == np.int32 for d in tflite_runner.inputs)
    onnx_out, tflite_out = OnnxRunner(onnx_bytes).run(x), tflite_runner.run(x)
    floor = 0.99 if stream == "split" else 0.95
    assert embedding_agreement(reference, onnx_out)["cosine_mean"] >= floor
    assert embedding_agreement(reference, tflite_out)["cosine_mean"] >= floor
    assert np.abs(onnx_out - tflite_out).max() < 0.05
    fp32 = OnnxRunner(write_onnx(graph, quantized=False)).run(x), TfliteRunner(write_tflite(graph, quantized=False)).run(x)
    for out in fp32:
        np.testing.assert_allclose(out, reference, atol=1e-5)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The encoder as a model file, labelled passage pairs, and a word-level tokenizer that
    writes them as two segments."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    folder = tmp_path_factory.mktemp("several")
    shutil.copy(Path(__file__).with_name("text_encoder.py"), folder / "encoder.py")
    rng = np.random.default_rng(0)
    lines = []
    for row in range(96):
        first, second = (" ".join(rng.choice(WORDS, rng.integers(low, high))) for low, high in ((2, 24), (1, 6)))
        lines.append(json.dumps({"text": first, "text_pair": second, "label": row % 3}))
    (folder / "passages.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train([str(folder / "passages.jsonl")], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_compress_and_eval_from_text_with_mask_and_segments(text_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, tokenizer = str(text_folder / "passages.jsonl"), str(text_folder / "tokenizer.json")
    argv = ["compress", f"{text_folder / 'encoder.py'}:bert", "--calib", data, "--tokenizer", tokenizer, "--seq-len", str(LENGTH)]
    assert run([*argv, "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["calibration"]["text"]["truncated"] > 0
    evaluation = report["evaluation"]
    assert evaluation["int8_vs_fp32"]["cosine_mean"] >= 0.99 and evaluation["tflite"]["vs_fp32"]["cosine_mean"] >= 0.99
    argv = ["eval", str(tmp_path / "out" / "model.tflite"), "--data", data, "--tokenizer", tokenizer, "--seq-len", str(LENGTH)]
    assert run([*argv, "--reference", str(tmp_path / "out" / "model.fp32.onnx"), "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)["reference"]
    assert reference["cosine_mean"] >= 0.99 and reference["neighbour_agreement"] is not None
    assert run(["bench", str(tmp_path / "out" / "model.onnx"), "--runs", "3", "--warmup", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p50_ms"] > 0, "the benchmark feeds every input"


def test_npz_arrays_feed_the_arguments_of_their_names(text_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = _batch(48, 2)
    np.savez(tmp_path / "named.npz", attention_mask=x[:, 1], input_ids=x[:, 0])  # no token types: the forward's default
    model = f"{text_folder / 'encoder.py'}:bert"
    assert run(["compress", model, "--calib", str(tmp_path / "named.npz"), "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    capsys.readouterr()
    inputs = [i.name for i in onnx.load(str(tmp_path / "out" / "model.fp32.onnx")).graph.input]
    assert inputs == ["input_ids", "attention_mask"], "the forward's order, not the file's"
    from text_encoder import bert

    expected = _torch(bert().eval(), x[:, :2])
    np.testing.assert_allclose(OnnxRunner(tmp_path / "out" / "model.fp32.onnx").run(x[:, :2]), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("arrays", "model", "message"),
    [
        (
            {"input_ids": 0, "attention_msk": 1},
            "bert",
            "gives attention_msk, which the model does not take (it takes input_ids, attention_mask",
        ),
        ({"x": 0}, "mask_only", "the model also takes attention_mask, and calibration data"),
        ({"input_ids": 0, "token_type_ids": 2}, "mask_only", "the model takes attention_mask, which calibration data"),
    ],
    ids=["misspelt", "one-array", "missing"],
)
def test_inputs_that_do_not_match_the_forward_are_one_line(
    text_folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], arrays: dict[str, int], model: str, message: str
) -> None:
    x = _batch(8, 3)
    np.savez(tmp_path / "bad.npz", **{name: x[:, column] for name, column in arrays.items()})  # type: ignore[arg-type]
    capfd.readouterr()
    argv = ["compress", f"{text_folder / 'encoder.py'}:{model}", "--calib", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out")]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


INTENTS = Path(__file__).parents[1] / "calibration" / "intents"


def test_the_intents_data_is_what_its_script_makes(tmp_path: Path) -> None:
    import subprocess
    import sys

    shutil.copy(INTENTS / "make.py", tmp_path / "make.py")
    done = subprocess.run([sys.executable, str(tmp_path / "make.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (INTENTS / name).read_text(), name
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == json.loads((INTENTS / "tokenizer.json").read_text())["model"]["vocab"]


def test_the_demo_text_model_trains_and_compresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """make demo's text model: a BERT classifier trained by --finetune on the intents commands."""
    train, test, tokenizer = (str(INTENTS / name) for name in ("train.jsonl", "test.jsonl", "tokenizer.json"))
    argv = ["compress", "edgetune.zoo:intent_bert", "--calib", train, "--train", train, "--finetune", "300steps", "--eval", test]
    assert run([*argv, "--tokenizer", tokenizer, "--seq-len", "16", "-o", str(tmp_path / "out"), "--quiet", "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)["evaluation"]
    assert evaluation["int8_accuracy"] >= 0.95 and evaluation["tflite"]["accuracy"] >= 0.95
    inputs = [i.name for i in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.input]
    assert inputs == list(NAMES)


def test_a_pt2_with_several_inputs_takes_them_by_its_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A program exported with the ids and the mask: its user inputs name the .npz arrays."""
    from text_encoder import bert

    model = bert()
    example = torch.zeros(1, LENGTH, dtype=torch.long)
    program = torch.export.export(model, (), {"input_ids": example, "attention_mask": example + 1}, strict=False)
    torch.export.save(program, str(tmp_path / "bert.pt2"))
    x = _batch(32, 6)
    np.savez(tmp_path / "calib.npz", input_ids=x[:, 0], attention_mask=x[:, 1])
    argv = ["compress", str(tmp_path / "bert.pt2"), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"), "--quiet"]
    assert run(argv) == 0
    capsys.readouterr()
    fp32 = tmp_path / "out" / "model.fp32.onnx"
    assert [i.name for i in onnx.load(str(fp32)).graph.input] == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(OnnxRunner(fp32).run(x[:, :2]), _torch(model, x[:, :2]), atol=1e-5)
