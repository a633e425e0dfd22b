"""``--mode dynamic-int8`` and ``--mode float16``: the modes without calibration, in both formats,
run on the real ONNX Runtime and LiteRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite

from edgetune.cli.main import run

BASE = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--quiet"]


@pytest.fixture(scope="module", params=["dynamic-int8", "float16"])
def moded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp(request.param) / "out"
    assert run([*BASE, "--mode", request.param, "-o", str(out)]) == 0
    return request.param, out, json.loads((out / "report.json").read_text())


def _tflite_tensors(blob: bytes) -> tuple[list[tflite.Tensor], list[str]]:
    model = tflite.Model.GetRootAsModel(blob, 0)
    graph = model.Subgraphs(0)
    names = {value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    ops = [names[model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode()] for i in range(graph.OperatorsLength())]
    return [graph.Tensors(i) for i in range(graph.TensorsLength())], ops


def test_both_artifacts_keep_the_float_models_accuracy(moded: tuple[str, Path, dict]) -> None:  # type: ignore[type-arg]
    mode, out, report = moded
    ev = report["evaluation"]
    assert report["quantization"]["config"]["mode"] == mode and report["quantization"]["calibration"]["method"] == "mse"
    assert report["quantization"]["tensors"] == [] and report["layers"] == []
    assert ev["int8_accuracy"] >= ev["fp32_accuracy"] - 0.01 and ev["tflite"]["accuracy"] >= ev["fp32_accuracy"] - 0.01
    assert ev["int8_vs_fp32"]["sqnr_db"] > (50 if mode == "float16" else 25)
    assert ev["tflite"]["delegation"]["not_delegated"] == [], "XNNPACK takes every op"
    ratio = report["sizes"]["model.onnx_bytes"] / report["sizes"]["model.fp32.onnx_bytes"]
    assert ratio < (0.65 if mode == "float16" else 0.55)


def test_the_onnx_file_is_the_modes(moded: tuple[str, Path, dict]) -> None:  # type: ignore[type-arg]
    mode, out, _ = moded
    model = onnx.load(str(out / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    types = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    if mode == "float16":
        assert "Cast" in ops and types == {onnx.TensorProto.FLOAT16}
    else:
        assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
        assert onnx.TensorProto.INT8 in types
        assert "Conv" in ops, "grouped (depthwise) convolutions stay float, as in the TFLite file"


def test_the_tflite_file_is_the_modes(moded: tuple[str, Path, dict]) -> None:  # type: ignore[type-arg]
    mode, out, _ = moded
    tensors, ops = _tflite_tensors((out / "model.tflite").read_bytes())
    kinds = {t.Type() for t in tensors}
    assert tflite.TensorType.FLOAT32 in kinds
    if mode == "float16":
        assert tflite.TensorType.FLOAT16 in kinds and ops.count("DEQUANTIZE") == sum(t.Type() == tflite.TensorType.FLOAT16 for t in tensors)
        assert tflite.TensorType.INT8 not in kinds
    else:
        weights = [t for t in tensors if t.Type() == tflite.TensorType.INT8]
        convolutions = [t for t in weights if t.ShapeLength() == 4]
        linear = [t for t in weights if t.ShapeLength() == 2]
        assert convolutions and all(t.Quantization().ScaleLength() == t.Shape(0) for t in convolutions), "a scale per output channel"
        assert linear and all(t.Quantization().ScaleLength() == 1 for t in linear), "one per linear layer, as boards' runtimes read it"
        assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops


def test_the_same_inputs_give_the_same_bytes(moded: tuple[str, Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    mode, out, _ = moded
    assert run([*BASE, "--mode", mode, "-o", str(tmp_path / "again")]) == 0
    for name in ("model.onnx", "model.tflite", "model.edgetune"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_export_of_the_compressed_model_keeps_the_mode(moded: tuple[str, Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, out, _ = moded
    assert run(["export", str(out / "model.edgetune"), "-o", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.tflite").read_bytes() == (out / "model.tflite").read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "float16", "--ptq", "adaround"], "--ptq works on the calibrated int8 model, not with --mode float16"),
        (["--mode", "dynamic-int8", "--keep-float", "stem"], "--keep-float works on the calibrated int8 model"),
        (["--mode", "float16", "--sensitivity"], "--sensitivity works on the calibrated int8 model"),
        (["--mode", "float16", "--tflite-io", "int8"], "--tflite-io int8 needs a calibrated input scale"),
        (["--mode", "float16", "--finetune", "5steps", "--train", "digits:train", "--qat"], "--qat works on the calibrated int8 model"),
        (["--mode", "float32"], "Invalid value for '--mode'"),
        (["--mode", "dynamic-int8", "--c-array"], "--c-array is for TFLite Micro, which runs neither float16 nor hybrid models"),
    ],
)
def test_what_needs_calibration_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    assert run([*BASE, *extra, "-o", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_recipe_key_replays(moded: tuple[str, Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    mode, out, _ = moded
    assert f'mode = "{mode}"' in (out / "recipe.toml").read_text()
    assert run(["compress", "--recipe", str(out / "recipe.toml"), "-o", str(tmp_path / "replay"), "--quiet"]) == 0
    assert np.array_equal(
        np.frombuffer((tmp_path / "replay" / "model.tflite").read_bytes(), np.uint8),
        np.frombuffer((out / "model.tflite").read_bytes(), np.uint8),
    )
