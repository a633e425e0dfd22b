"""End-to-end: the CLI compresses the digits CNN and the real runtimes check the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetune.cli.main import run


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    code = run([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_compress_digits_keeps_accuracy_in_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    report = _json(capsys, ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(out), "--quiet"])
    assert sorted(p.name for p in out.iterdir()) == [
        "model.edgetune",
        "model.fp32.onnx",
        "model.onnx",
        "model.tflite",
        "recipe.toml",
        "report.json",
    ]
    assert report["artifacts"] == sorted(p.name for p in out.iterdir())
    assert json.loads((out / "report.json").read_text()) == report
    evaluation = report["evaluation"]
    assert evaluation["samples"] == 360 and evaluation["fp32_accuracy"] > 0.95
    assert evaluation["accuracy_drop_pp"] <= 0.3, "int8 within 0.3 pp of fp32 on the digits test split"
    assert report["schema"] == "edgetune.report" and report["version"] == 1
    assert report["quantization"]["calibration"]["samples"] == 128
    assert len(report["layers"]) == report["model"]["nodes"]
    assert {"minmax", "percentile", "mse"} <= set(report["quantization"]["tensors"][0]["ranges"])
    tflite = evaluation["tflite"]
    assert tflite["top1_agreement_with_onnx_int8"] >= 0.995, "TFLite and ONNX int8 agree on the digits test split"
    assert abs(tflite["accuracy"] - evaluation["int8_accuracy"]) <= 0.003
    assert tflite["delegation"]["not_delegated"] == []
    # The ORT run of the written file agrees with what the report says.
    doc = _json(capsys, ["eval", str(out / "model.onnx"), "--data", "digits:test", "--reference", str(out / "model.fp32.onnx")])
    assert doc["accuracy"] == evaluation["int8_accuracy"]
    assert doc["reference"]["top1_agreement"] == evaluation["int8_vs_fp32"]["top1_agreement"]


def test_compress_without_eval_data_reports_held_out_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _json(
        capsys, ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path), "--quiet", "--calib-samples", "64"]
    )
    evaluation = report["evaluation"]
    assert evaluation["data"] == "digits:calibration[64:]" and evaluation["samples"] == 256  # at most HOLDOUT_MAX held-out samples
    assert "held-out" in evaluation["note"]
    assert evaluation["int8_vs_fp32"]["top1_agreement"] >= 0.97 and evaluation["int8_vs_fp32"]["sqnr_db"] > 20


def test_artifacts_are_byte_identical_across_runs(tmp_path: Path, digits_out: Path) -> None:
    from edgetune.pipeline import compress

    compress("edgetune.zoo:digits_cnn", "digits", tmp_path, eval_data="digits:test")
    for name in ("model.onnx", "model.fp32.onnx", "model.tflite", "model.edgetune"):
        assert (tmp_path / name).read_bytes() == (digits_out / name).read_bytes(), name


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_each_calibration_method_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str) -> None:
    report = _json(capsys, ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path), "--quiet", "--method", method])
    tensors = report["quantization"]["tensors"]
    assert all(t["method"] == method and t["chosen"] == t["ranges"][method] for t in tensors)


def test_per_tensor_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _json(capsys, ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path), "--quiet", "--per-tensor"])
    assert report["model"]["per_channel_tensors"] == 0
    assert report["evaluation"]["int8_vs_fp32"]["top1_agreement"] > 0.9
    assert report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.995


def test_edgetune_file_reloads_and_evaluates(digits_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, ["eval", str(digits_out / "model.edgetune"), "--data", "digits:test"])
    report = json.loads((digits_out / "report.json").read_text())
    # Reloaded graph, rewritten as signed int8: the same accuracy as the artifact.
    assert abs(doc["accuracy"] - report["evaluation"]["int8_accuracy"]) <= 1 / 360


def test_inspect_bench_and_targets(digits_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = _json(capsys, ["inspect", str(digits_out / "model.onnx")])
    assert info["quantization"]["qdq"] and info["quantization"]["activation_types"] == ["uint8"]
    report = json.loads((digits_out / "report.json").read_text())
    assert info["macs"] == report["model"]["macs"] and info["parameters"] == report["model"]["parameters"]
    bench = _json(capsys, ["bench", str(digits_out / "model.onnx"), "--runs", "20", "--warmup", "2", "--threads", "1", "--quiet"])
    assert bench["threads"] == 1 and bench["runs"] == 20
    assert 0 < bench["p50_ms"] <= bench["p90_ms"] <= bench["p99_ms"]
    tflite_bench = _json(capsys, ["bench", str(digits_out / "model.tflite"), "--runs", "20", "--warmup", "2", "--threads", "1", "--quiet"])
    assert tflite_bench["runtime"].startswith(("ai-edge-litert", "tflite-runtime")) and tflite_bench["p50_ms"] > 0
    tflite_info = _json(capsys, ["inspect", str(digits_out / "model.tflite")])
    assert tflite_info["macs"] == report["model"]["macs"] and tflite_info["parameters"] == report["model"]["parameters"]
    assert tflite_info["op_versions"]["CONV_2D"] == 3 and tflite_info["schema_version"] == 3
    targets = _json(capsys, ["targets", "list"])
    names = {t["name"] for t in targets["targets"]}
    assert names == {"host", "raspberry-pi-4", "raspberry-pi-5", "pixel-8", "jetson-orin-nano", "x86-vnni", "stm32h7", "esp32-s3"}
    pi = _json(capsys, ["targets", "show", "raspberry-pi-4"])
    assert pi["class"] == "cpu" and pi["peak"]["source"]


def test_human_output_and_json_purity_in_a_real_process(tmp_path: Path) -> None:
    """A separate process: stdout holds exactly one JSON document, progress goes to stderr."""
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "edgetune", "compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(out), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    assert "calibration" in done.stderr and "Warning" not in done.stderr
    human = subprocess.run(
        [sys.executable, "-m", "edgetune", "inspect", str(out / "model.onnx")], capture_output=True, text=True, timeout=120
    )
    assert human.returncode == 0 and "QuantizeLinear" in human.stdout


def test_formats_and_mcu_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "compress",
        "edgetune.zoo:digits_cnn",
        "--calib",
        "digits",
        "-o",
        str(tmp_path),
        "--quiet",
        "--target",
        "stm32h7",
        "--formats",
        "tflite",
    ]
    report = _json(capsys, argv)
    assert report["artifacts"] == ["model.edgetune", "model.tflite", "recipe.toml", "report.json"]
    assert report["export"]["formats"] == ["tflite"] and report["target"]["onnx_activations"] == "int8"
    info = _json(capsys, ["inspect", str(tmp_path / "model.tflite")])
    assert info["input_type"] == "int8" and info["output_type"] == "int8", "MCU targets get int8 model input and output"
    assert info["metadata"]["edgetune"]["io"] == "int8" and "normalization" in info["metadata"]["edgetune"]


def test_export_rewrites_the_same_artifacts(digits_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, ["export", str(digits_out / "model.edgetune"), "-o", str(tmp_path), "--float-tflite"])
    assert sorted(doc["written"]) == ["model.fp32.onnx", "model.fp32.tflite", "model.onnx", "model.tflite"]
    for name in ("model.onnx", "model.tflite"):
        assert (tmp_path / name).read_bytes() == (digits_out / name).read_bytes(), name
    float_eval = _json(
        capsys, ["eval", str(tmp_path / "model.fp32.tflite"), "--data", "digits:test", "--reference", str(tmp_path / "model.fp32.onnx")]
    )
    assert float_eval["reference"]["top1_agreement"] == 1.0 and float_eval["reference"]["sqnr_db"] > 80
