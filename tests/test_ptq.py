"""Post-training techniques: equalization, bias correction, AdaRound, and --ptq in the CLI.

The test model has what breaks int8 on mobile networks: a depthwise layer whose channels
differ in range by orders of magnitude, ReLU and ReLU6 between layers, and large positive
biases. Every int8 figure comes from the real ONNX Runtime running the exported artifact.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.evaluate.metrics import sqnr_db
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.quant import dequantize_array, quantize_array
from edgetune.ir.serialize import graph_from_bytes, graph_to_bytes
from edgetune.quantize import QuantConfig, calibrate
from edgetune.quantize.adaround import adaround, learning_rate, plan
from edgetune.quantize.bias_correct import correct_biases
from edgetune.quantize.config import parse_ptq
from edgetune.quantize.equalize import equalize, find_pairs
from edgetune.quantize.ptq import quantize

SHAPE = (3, 16, 16)


def _stem_dw_project_head(module: nn.Module, width: int, projected: int) -> None:
    """The layers of the test models: 3x3 conv, 3x3 depthwise, 1x1 projection, linear head."""
    torch.manual_seed(0)
    module.stem = nn.Conv2d(3, width, 3, padding=1)
    module.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
    module.project = nn.Conv2d(width, projected, 1)
    module.head = nn.Linear(projected, 5)


class Unbalanced(nn.Module):
    """conv -> ReLU -> depthwise -> ReLU6 -> 1x1 conv -> linear, with skewed channel ranges."""

    def __init__(self) -> None:
        super().__init__()
        _stem_dw_project_head(self, width=16, projected=8)
        with torch.no_grad():
            # What BatchNorm folding leaves behind: depthwise channel ranges from 0.01 to 10,
            # and the next layer compensating, so that every channel matters downstream.
            skew = torch.logspace(-2, 1, 16)
            self.dw.weight.mul_(skew.reshape(-1, 1, 1, 1))
            self.dw.bias.copy_(torch.linspace(0.1, 1.5, 16) * skew)
            self.project.weight.div_(skew.reshape(1, -1, 1, 1))
            self.stem.bias.add_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.clamp(self.dw(x), 0.0, 6.0)
        x = self.project(x).mean(dim=(2, 3))
        return self.head(x)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return capture(Unbalanced().eval(), SHAPE)


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(96, *SHAPE)).astype(np.float32)


def fp32(graph: Graph, x: np.ndarray) -> np.ndarray:
    return OnnxRunner(write_onnx(graph, quantized=False), spin=False).run(x)


def int8(graph: Graph, x: np.ndarray) -> np.ndarray:
    return OnnxRunner(write_onnx(graph, quantized=True), spin=False).run(x)


def test_pairs_are_found_through_relu_and_relu6(graph: Graph) -> None:
    pairs = [(p.first.act, p.second.attrs.get("groups")) for p in find_pairs(graph)]
    assert ("relu", 16) in pairs  # stem -> depthwise
    assert ("relu6", 1) in pairs  # depthwise -> 1x1 projection


def test_equalization_keeps_the_float_model_and_evens_the_ranges(graph: Graph, samples: np.ndarray) -> None:
    g = copy.deepcopy(graph)
    result = equalize(g, samples[:64])
    assert result.pairs == 2
    assert sqnr_db(fp32(graph, samples[:64]), fp32(g, samples[:64])) > 90  # exact on the data it saw
    assert result.to_dict()["median_spread_ratio"] < 1
    dw = next(n for n in g.nodes if n.attrs.get("groups") == 16)
    before = next(n for n in graph.nodes if n.attrs.get("groups") == 16)
    spread = lambda w: np.abs(w).reshape(16, -1).max(1).max() / np.abs(w).reshape(16, -1).max(1).min()  # noqa: E731
    assert spread(g.const(dw.inputs[1])) < spread(graph.const(before.inputs[1])) / 10


def test_equalization_leaves_relu6_channels_that_reach_the_clamp(graph: Graph, samples: np.ndarray) -> None:
    from edgetune.quantize.equalize import preact_ranges

    dw = next(n for n in graph.nodes if n.attrs.get("groups") == 16)
    high = preact_ranges(graph, samples[:64], [dw])[dw.name][1]
    saturating = np.flatnonzero(high >= 6.0)
    assert saturating.size, "the test model needs a depthwise channel that reaches 6"
    g = copy.deepcopy(graph)
    equalize(g, samples[:64])
    after = next(n for n in g.nodes if n.name == dw.name)
    # The stem -> depthwise pair may scale the depthwise layer's inputs, never its saturating outputs.
    ratio = g.const(after.inputs[2]) / graph.const(dw.inputs[2])
    assert np.allclose(ratio[saturating], 1.0, rtol=1e-5, atol=0)


def test_equalization_helps_per_tensor_int8(graph: Graph, samples: np.ndarray) -> None:
    config = QuantConfig(per_channel=False, ptq=())
    x_calib, x_test = samples[:64], samples[64:]
    reference = fp32(graph, x_test)
    plain = copy.deepcopy(graph)
    calibrate(plain, x_calib, config)
    equalized = copy.deepcopy(graph)
    equalize(equalized, x_calib)
    calibrate(equalized, x_calib, config)
    assert sqnr_db(reference, int8(equalized, x_test)) > sqnr_db(reference, int8(plain, x_test)) + 3


def test_bias_correction_removes_the_mean_shift_and_keeps_fp32(graph: Graph, samples: np.ndarray) -> None:
    x_calib, x_test = samples[:64], samples[64:]
    g = copy.deepcopy(graph)
    calibrate(g, x_calib, QuantConfig(per_channel=False, ptq=()))
    reference = fp32(graph, x_test)
    before = int8(g, x_test)
    result = correct_biases(g, x_calib)
    after = int8(g, x_test)
    assert result.layers == 4
    assert np.abs((after - reference).mean(0)).mean() < np.abs((before - reference).mean(0)).mean()
    assert sqnr_db(reference, after) >= sqnr_db(reference, before)
    np.testing.assert_array_equal(fp32(g, x_test), reference)  # the float model is untouched


def test_adaround_rounds_onto_the_grid_and_beats_nearest(graph: Graph, samples: np.ndarray) -> None:
    x_calib, x_test = samples[:64], samples[64:]
    nearest = copy.deepcopy(graph)
    calibrate(nearest, x_calib, QuantConfig(ptq=()))
    learned = copy.deepcopy(nearest)
    result = adaround(learned, x_calib, budget_s=2.0)
    assert result.layers == 4 and 0 < result.flipped < 0.5
    for node in learned.nodes:
        if node.op in ("conv2d", "linear"):
            tensor = learned.tensors[node.inputs[1]]
            assert tensor.qdata is not None and tensor.quant is not None
            levels = quantize_array(tensor.qdata, tensor.quant)
            np.testing.assert_allclose(dequantize_array(levels, tensor.quant), tensor.qdata, rtol=1e-6, atol=1e-9)
            np.testing.assert_array_equal(tensor.data, nearest.tensors[node.inputs[1]].data)  # float weights kept
    reference = fp32(graph, x_test)
    assert sqnr_db(reference, int8(learned, x_test)) > sqnr_db(reference, int8(nearest, x_test))


def test_adaround_is_deterministic(graph: Graph, samples: np.ndarray) -> None:
    runs = []
    for _ in range(2):
        g = copy.deepcopy(graph)
        calibrate(g, samples[:64], QuantConfig(ptq=()))
        adaround(g, samples[:64], budget_s=0.5)
        runs.append(write_onnx(g, quantized=True))
    assert runs[0] == runs[1]


def test_int8_values_survive_the_compressed_file(graph: Graph, samples: np.ndarray) -> None:
    g = copy.deepcopy(graph)
    quantize(g, samples[:64], QuantConfig(ptq=("adaround", "bias-correct"), ptq_budget=0.5))
    again = graph_from_bytes(graph_to_bytes(g))
    assert write_onnx(again, quantized=True) == write_onnx(g, quantized=True)
    assert write_onnx(again, quantized=False) == write_onnx(g, quantized=False)
    assert any(t.qdata is not None for t in again.tensors.values())


def test_best_keeps_only_what_raises_held_out_sqnr(graph: Graph, samples: np.ndarray) -> None:
    g = copy.deepcopy(graph)
    _, report = quantize(g, samples[:64], QuantConfig(per_channel=False, ptq=("best",), ptq_budget=1.0), samples[64:])
    scores = report["held_out_sqnr_db"]
    methods = report["calibration_method"]
    assert set(methods["held_out_sqnr_db"]) == {"minmax", "percentile", "mse"}
    assert methods["held_out_sqnr_db"][methods["chosen"]] == max(methods["held_out_sqnr_db"].values()) == scores["calibrated"]
    assert report["applied"][0] == "equalize"  # per-tensor weights
    # One budget for all of best: AdaRound gets what the modeled trials leave.
    assert 0 < report["trials_modeled_s"] < 1.0
    assert report["adaround_budget_s"] == pytest.approx(1.0 - report["trials_modeled_s"], abs=0.011)
    kept = scores["calibrated"]
    for name in ("adaround", "bias-correct"):
        if name in report["applied"]:
            assert scores[name] > kept
            kept = scores[name]
        else:
            assert "dropped" in report[name]["why"]
    assert sqnr_db(fp32(graph, samples[64:]), int8(g, samples[64:])) == pytest.approx(kept, abs=1e-2)


def test_adaround_plan_buys_fewer_samples_on_a_small_budget(graph: Graph) -> None:
    roomy, tight = plan(graph, 128, 10.0), plan(graph, 128, 0.01)
    assert (roomy.samples, roomy.positions) == (64, 64 * 64) and roomy.modeled_s <= 10.0
    assert tight.samples < roomy.samples and tight.iterations == 20  # the walk's setup may take half the budget
    assert plan(graph, 20, 10.0).samples == 20


def test_adaround_learning_rate_follows_the_run_length() -> None:
    # Short runs need a larger step for any rounding to flip; long runs keep 0.01.
    assert learning_rate(20) == learning_rate(50) == pytest.approx(0.1)
    assert learning_rate(100) == pytest.approx(0.05)
    assert learning_rate(500) == learning_rate(2000) == pytest.approx(0.01)


def test_adaround_leaves_depthwise_with_a_channel_multiplier_at_nearest(samples: np.ndarray) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.Flatten(), nn.Linear(12 * 256, 4)
    )
    g = capture(model.eval(), SHAPE)
    calibrate(g, samples[:32], QuantConfig(ptq=()))
    # A short plan (0.5 s) and a deadline the clock will not reach: this test is about which layers round.
    result = adaround(g, samples[:32], budget_s=0.5, deadline=time.perf_counter() + 600)
    assert result.layers == 2 and len(result.skipped) == 1  # the multiplier-2 grouped conv
    assert g.tensors[[n for n in g.nodes if n.name == result.skipped[0]][0].inputs[1]].qdata is None


def test_best_skips_adaround_when_its_trials_take_the_budget(graph: Graph, samples: np.ndarray) -> None:
    g = copy.deepcopy(graph)
    _, report = quantize(g, samples[:64], QuantConfig(ptq=("best",), ptq_budget=0.001), samples[64:])
    assert report["adaround_budget_s"] == 0 and "adaround" not in report["applied"]
    assert report["adaround"]["why"].startswith("skipped") and "adaround" not in report["held_out_sqnr_db"]
    assert not any(t.qdata is not None and t.name.endswith("weight") for t in g.tensors.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("none", ()), ("", ()), ("best", ("best",)), ("equalize, bias-correct", ("equalize", "bias-correct"))],
)
def test_parse_ptq(text: str, expected: tuple[str, ...]) -> None:
    assert parse_ptq(text) == expected


def test_cli_ptq_on_digits_keeps_tflite_and_onnx_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path / "out")]
    assert run([*argv, "--ptq", "equalize,adaround,bias-correct", "--ptq-budget", "2", "--method", "output", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    ptq = report["quantization"]["ptq"]
    assert ptq["applied"] == ["equalize", "adaround", "bias-correct"]
    assert report["quantization"]["calibration"]["method"] == "output"  # each tensor's record names the range it took
    assert all(t["method"] in t["ranges"] and t["chosen"] == t["ranges"][t["method"]] for t in report["quantization"]["tensors"])
    assert ptq["adaround"]["layers"] > 0
    tflite = report["evaluation"]["tflite"]
    assert tflite["top1_agreement_with_onnx_int8"] >= 0.99 and tflite["max_lsb_vs_onnx_int8"] <= 2
    assert report["evaluation"]["int8_accuracy"] >= report["evaluation"]["fp32_accuracy"] - 0.01


def test_cli_rejects_an_unknown_technique(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "out"), "--ptq", "equalise"]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: post-training technique 'equalise' is unknown; use best, none or some of")
    assert not (tmp_path / "out").exists()


def test_calibration_audit_reports_tails_and_clipping() -> None:
    from edgetune.quantize.calibrate import audit
    from edgetune.quantize.observers import TensorStats, mse_range

    values = np.random.default_rng(1).normal(size=200_000).astype(np.float32)
    values[:3] = [40.0, -35.0, 38.0]  # a few outliers stretch min/max
    stats = TensorStats()
    stats.update(torch.from_numpy(values))
    stats.finish()
    full = audit(stats, (stats.low, stats.high))
    assert full["clipped_share"] == 0.0 and full["outlier_ratio"] > 5
    clipped = audit(stats, mse_range(stats))
    assert 0.0 < clipped["clipped_share"] < 0.01


class RareIgnored(nn.Module):
    """One stem channel fires rarely but far (up to ~37) and the head ignores it: MSE and
    min/max stretch the shared range over it, which costs every other channel its step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            self.stem.weight[0] = 20 / 27**0.5
            self.stem.bias[0] = -50.0
            self.head.weight[:, 0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)).mean(dim=(2, 3)))


def test_output_method_chooses_each_range_by_the_models_output(samples: np.ndarray) -> None:
    original = capture(RareIgnored().eval(), SHAPE)
    reference = fp32(original, samples[64:])
    scores, stem_records = {}, {}
    for method in ("mse", "output"):
        g = copy.deepcopy(original)
        records = calibrate(g, samples[:64], QuantConfig(method=method, ptq=()))
        stem_records[method] = next(r for r in records if r.tensor == g.nodes[0].outputs[0])
        scores[method] = sqnr_db(reference, int8(g, samples[64:]))
    mse, output = stem_records["mse"], stem_records["output"]
    assert mse.chosen[1] > 20  # local MSE keeps the rare values
    assert output.method == "percentile" and output.chosen == output.ranges["percentile"] and output.chosen[1] < 5
    assert scores["output"] > scores["mse"] + 1.0


def test_sensitivity_finds_the_skewed_layers(graph: Graph, samples: np.ndarray) -> None:
    from edgetune.quantize.sensitivity import layer_sensitivity

    g = copy.deepcopy(graph)
    calibrate(g, samples[:64], QuantConfig(ptq=()))
    rows = layer_sensitivity(g, samples[64:])
    assert [row["op"] for row in rows] == ["conv2d", "depthwise", "conv2d", "linear"]
    stem, depthwise, projection, head = (row["sqnr_db"] for row in rows)
    # The projection's weight rows span 1000x (they undo the depthwise skew): per-row scales
    # round its small entries away. The depthwise output's tiny channels vanish in int8.
    assert projection < depthwise < min(stem, head)
    assert all(np.isfinite(row["sqnr_db"]) for row in rows)


def test_cli_sensitivity_writes_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(out), "--sensitivity", "--json", "--quiet"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    block = report["sensitivity"]
    assert block["plot"] == "sensitivity.png" and "sensitivity.png" in report["artifacts"]
    assert [row["op"] for row in block["layers"]].count("linear") == 1 and len(block["layers"]) == 7
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tensors = report["quantization"]["tensors"]
    assert all(0.0 <= t["clipped_share"] <= 1.0 for t in tensors if "clipped_share" in t)


def test_four_bit_weights_stay_in_range_in_both_artifacts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "out"
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(out)]
    assert run([*argv, "--weight-bits", "4", "--ptq", "adaround", "--ptq-budget", "2", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    weights = report["quantization"]["weights"]
    # 8 bits: the first and the last layer, and the two depthwise ones
    assert weights["bits"] == 4 and weights["eight_bit_layers"] == ["stem.0", "block1.depthwise.0", "block2.depthwise.0", "head.2"]
    assert 0.5 < weights["four_bit_share"] < 1.0
    assert weights["int8_bytes"] // 2 < weights["packed_int4_bytes"] < weights["int8_bytes"]
    assert report["quantization"]["scheme"].startswith("W4A8")
    model = onnx.load(str(out / "model.onnx"))
    arrays = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_quantized")]
    levels = [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]
    assert len(levels) == 7 and sum(np.abs(level).max() > 7 for level in levels) == 4
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    interpreter = TfliteRunner((out / "model.tflite").read_bytes()).interpreter
    conv_weights = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.int8 and len(d["shape"]) == 4 and "weight" in d["name"]]
    wide = [d["name"] for d in conv_weights if np.abs(interpreter.get_tensor(d["index"]).astype(int)).max() > 7]
    assert len(conv_weights) >= 5 and len(wide) == 3  # the first conv and the depthwise ones (the last layer is linear)
    tflite = report["evaluation"]["tflite"]
    assert tflite["top1_agreement_with_onnx_int8"] >= 0.99
    # model.int4.onnx: the same levels packed as INT4 (opset 21); ONNX Runtime runs it.
    packed = onnx.load(str(out / "model.int4.onnx"))
    assert {o.domain: o.version for o in packed.opset_import}[""] == 21
    int4 = {t.name: onnx.numpy_helper.to_array(t).astype(np.int8) for t in packed.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    stored = [a for name, a in int4.items() if name.endswith("_quantized")]
    assert len(stored) == 3 and all(np.abs(a).max() <= 7 for a in stored)
    assert sorted(a.tobytes() for a in stored) == sorted(level.tobytes() for level in levels if np.abs(level).max() <= 7)
    assert weights["storage"]["model.int4.onnx"].startswith("int4")
    packed_bytes = sum(
        len(t.raw_data) for t in packed.graph.initializer if t.data_type == onnx.TensorProto.INT4 and t.name.endswith("_quantized")
    )
    assert packed_bytes == sum(-(-a.size // 2) for a in stored)  # two weights a byte
    assert report["sizes"]["model.int4.onnx_bytes"] < report["sizes"]["model.onnx_bytes"]
    assert run(["inspect", str(out / "model.int4.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["int4_weight_tensors"] == 3
    packed_eval = report["evaluation"]["onnx_int4"]
    assert packed_eval["top1_agreement_with_onnx_int8"] >= 0.99 and packed_eval["max_lsb_vs_onnx_int8"] <= 2


def test_adaround_matters_most_at_four_bits(graph: Graph, samples: np.ndarray) -> None:
    x_calib, x_test = samples[:64], samples[64:]
    reference = fp32(graph, x_test)
    scores = {}
    for ptq in ((), ("adaround",)):
        g = copy.deepcopy(graph)
        quantize(g, x_calib, QuantConfig(ptq=ptq, weight_bits=4, ptq_budget=2.0))
        scores[ptq] = sqnr_db(reference, int8(g, x_test))
        for node in g.nodes:
            if node.op not in WEIGHTED_OPS:
                continue
            tensor = g.tensors[node.inputs[1]]
            largest = np.abs(quantize_array(tensor.int8_source, tensor.quant)).max()  # type: ignore[arg-type]
            # The first and last layers and the depthwise one keep 8 bits: only the projection is 4-bit.
            assert (largest <= 7) == (g.const(node.inputs[1]).shape == (8, 16, 1, 1)), node.name
    assert scores[("adaround",)] > scores[()] + 1.0


@pytest.mark.parametrize(
    ("text", "metric", "value"),
    [
        ("30dB", "sqnr_db", 30.0),
        ("27.5 dB", "sqnr_db", 27.5),
        ("99%", "agreement", 0.99),
        ("0.995", "agreement", 0.995),
        ("99", "agreement", 0.99),
    ],
)
def test_accuracy_target_parses(text: str, metric: str, value: float) -> None:
    from edgetune.quantize.fallback import AccuracyTarget

    target = AccuracyTarget.parse(text)
    assert (target.metric, target.value) == (metric, pytest.approx(value))


@pytest.mark.parametrize("text", ["fast", "150%", "-3dB"])
def test_accuracy_target_rejects(text: str) -> None:
    from edgetune.errors import InputError
    from edgetune.quantize.fallback import AccuracyTarget

    with pytest.raises(InputError):
        AccuracyTarget.parse(text)


def test_fallback_keeps_the_fewest_sensitive_layers_in_float_in_both_artifacts(graph: Graph, samples: np.ndarray) -> None:
    from edgetune.evaluate.tflite_runtime import TfliteRunner
    from edgetune.export.tflite import write_tflite

    g = copy.deepcopy(graph)
    _, report = quantize(g, samples[:64], QuantConfig(per_channel=False, ptq=(), accuracy_target="30dB"), samples[64:])
    block = report["fallback"]
    assert block["before"]["sqnr_db"] < 30 <= block["after"]["sqnr_db"] and block["reached"]
    # Floating the projection alone does not help: the depthwise output it reads is what int8
    # cannot hold. With both in float, the tensor between them stays float.
    assert sorted(block["float_layers"]) == ["dw", "project"]  # named after the modules
    between = next(n for n in g.nodes if n.name == "dw").outputs[0]
    assert g.tensors[between].quant is None
    projection = next(n for n in g.nodes if n.name == "project")
    assert projection.in_float and g.tensors[projection.inputs[1]].quant is None
    onnx_int8 = int8(g, samples[64:])
    assert sqnr_db(fp32(graph, samples[64:]), onnx_int8) == pytest.approx(block["after"]["sqnr_db"], abs=0.5)
    runner = TfliteRunner(write_tflite(g, quantized=True))
    kinds = {d["name"]: d["dtype"] for d in runner.interpreter.get_tensor_details()}
    assert kinds[between] == np.float32
    step = float(g.tensors[g.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
    assert np.abs(runner.run(samples[64:]) - onnx_int8).max() <= step + 1e-6  # the same choice in both artifacts
    again = graph_from_bytes(graph_to_bytes(g))
    assert next(n for n in again.nodes if n.name == "project").in_float


def test_fallback_that_cannot_reach_the_target_keeps_int8(graph: Graph, samples: np.ndarray) -> None:
    g = copy.deepcopy(graph)
    _, report = quantize(g, samples[:64], QuantConfig(ptq=(), accuracy_target="200dB"), samples[64:])
    block = report["fallback"]
    assert not block["reached"] and block["float_layers"] == [] and "not reachable" in block["why"]
    assert block["before"]["sqnr_db"] < block["every_layer_switched"]["sqnr_db"] < 200  # the bound it measured
    assert not any(n.in_float for n in g.nodes)


def test_cli_accuracy_target_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path / "out")]
    assert run([*argv, "--ptq", "none", "--json", "--quiet"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert run([*argv, "--ptq", "none", "--accuracy-target", "33dB", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    block = report["quantization"]["ptq"]["fallback"]
    assert block["reached"] and block["after"]["sqnr_db"] >= 33 > block["before"]["sqnr_db"]
    assert 0 < len(block["float_layers"]) < 7
    tflite = report["evaluation"]["tflite"]
    assert tflite["top1_agreement_with_onnx_int8"] >= 0.99
    assert report["evaluation"]["int8_vs_fp32"]["sqnr_db"] > plain["evaluation"]["int8_vs_fp32"]["sqnr_db"]  # on the --eval data too


def test_cli_rejects_a_bad_accuracy_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "out"), "--accuracy-target", "fast"]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: accuracy target 'fast' is not like 30dB or 99%; ")


class Outlier(nn.Module):
    """One stem channel 300x the others (the next depthwise layer scales it back): int8 gives
    the tensor between them too coarse a step for every other channel; int16 does not."""

    def __init__(self) -> None:
        super().__init__()
        _stem_dw_project_head(self, width=8, projected=8)
        with torch.no_grad():
            for layer, factor in ((self.stem, 300.0), (self.dw, 1 / 300.0)):
                layer.weight[0].mul_(factor)
                layer.bias[0].mul_(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        return self.head(self.project(x).mean(dim=(2, 3)))


def test_int16_fallback_widens_the_activations_between_sensitive_layers_in_both_artifacts(samples: np.ndarray) -> None:
    import onnx

    from edgetune.evaluate.tflite_runtime import TfliteRunner
    from edgetune.export.tflite import write_tflite
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    original = capture(Outlier().eval(), SHAPE)
    g = copy.deepcopy(original)
    _, report = quantize(g, samples[:64], QuantConfig(ptq=(), accuracy_target="35dB", fallback="int16"), samples[64:])
    block = report["fallback"]
    assert block["precision"] == "int16" and block["reached"] and block["before"]["sqnr_db"] < 35 <= block["after"]["sqnr_db"]
    assert sorted(block["int16_layers"]) == ["dw", "stem"]
    stem, dw = (next(n for n in g.nodes if n.name == name) for name in ("stem", "dw"))
    between = g.tensors[stem.outputs[0]].quant
    assert between is not None and between.dtype == "int16" and int(between.zero_point[0]) == 0
    for node in (stem, dw):  # int8 weights stay; the bias widens to int64
        assert g.tensors[node.inputs[1]].quant.dtype == "int8"  # type: ignore[union-attr]
        assert g.tensors[node.inputs[2]].quant.dtype == "int64"  # type: ignore[union-attr]
    assert g.tensors[dw.outputs[0]].quant.dtype == "int8"  # type: ignore[union-attr]  # read by an int8 layer
    x = samples[64:]
    onnx_blob = write_onnx(g, quantized=True)
    assert {o.domain: o.version for o in onnx.load_from_string(onnx_blob).opset_import}[""] == 21
    onnx_out = OnnxRunner(onnx_blob, spin=False).run(x)
    assert sqnr_db(fp32(original, x), onnx_out) == pytest.approx(block["after"]["sqnr_db"], abs=0.5)
    simulated = run_batches(GraphRunner(g, quantized=True), x)
    assert sqnr_db(onnx_out, simulated) > 60  # the simulation is the ONNX model
    blob = write_tflite(g, quantized=True)
    assert b"2.3.0\0" in blob  # min_runtime_version: the 16x8 operator versions
    runner = TfliteRunner(blob)
    kinds = {d["name"]: d["dtype"] for d in runner.interpreter.get_tensor_details()}
    assert kinds[stem.outputs[0]] == np.int16 and kinds[stem.inputs[2]] == np.int64
    step = float(g.tensors[g.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
    assert np.abs(runner.run(x) - onnx_out).max() <= 2 * step + 1e-6
    again = graph_from_bytes(graph_to_bytes(g))
    assert again.tensors[stem.outputs[0]].quant.same_as(between)  # type: ignore[union-attr]
    assert next(n for n in again.nodes if n.name == "stem").attrs["precision"] == "int16"


def test_cli_fallback_needs_an_accuracy_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "out"), "--fallback", "int16"]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --fallback int16 without --accuracy-target; ")
    assert not (tmp_path / "out").exists()


def test_float_fallback_runs_the_ops_between_float_layers_in_float(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the digits CNN 34 dB needs the residual add between float layers in float too: both
    artifacts run it in float, XNNPACK still takes every TFLite operator."""
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path / "out")]
    assert run([*argv, "--ptq", "none", "--accuracy-target", "34dB", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    block = report["quantization"]["ptq"]["fallback"]
    assert block["reached"] and "block1.add" in block["float_ops"] and len(block["float_layers"]) < 7
    graph = graph_from_bytes((tmp_path / "out" / "model.edgetune").read_bytes())
    assert next(n for n in graph.nodes if n.name == "block1.add").in_float
    floating = [name for name in graph.activations() if graph.tensors[name].quant is None]
    assert floating and all(graph.producers()[name].in_float for name in floating)
    tflite = report["evaluation"]["tflite"]
    assert tflite["max_lsb_vs_onnx_int8"] <= 1 and tflite["delegation"]["not_delegated"] == []
    assert report["evaluation"]["int8_vs_fp32"]["sqnr_db"] > 33


def test_keep_float_layers_run_in_float_in_both_artifacts(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import onnx

    base = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--quiet"]
    assert run([*base, "--keep-float", "block1.pointwise.1", "-o", str(tmp_path / "bad")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no layer named block1.pointwise.1; did you mean block1.pointwise.0?" in err[0]
    assert not (tmp_path / "bad").exists()

    # the user's module names: a module (stem, head) picks the weighted layers inside it
    assert run([*base, "--keep-float", "stem,head", "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["quantization"]["ptq"]["keep_float"]["layers"] == ["stem.0", "head.2"]
    assert report["quantization"]["config"]["keep_float"] == ["stem", "head"]
    assert report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    float_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}
    int8_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2}
    assert len(float_weights) == 2 and int8_weights, "two layers keep float weights, the others int8"
    effective = (tmp_path / "out" / "recipe.toml").read_text()
    assert 'keep_float = ["stem", "head"]' in effective


def test_layer_bits_mix_four_and_eight_bit_weights(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """--layer-bits (quantize.layer_bits) sets some layers' or modules' bits over --weight-bits,
    the depthwise and first-and-last rules included: a mixed-precision model, replayed by its recipe."""
    import onnx

    out = tmp_path / "out"
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--quiet"]
    assert run([*argv, "-o", str(out), "--layer-bits", "block2=4", "--layer-bits", "expand=4", "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    weights = report["quantization"]["weights"]
    assert weights["eight_bit_layers"] == ["stem.0", "block1.depthwise.0", "block1.pointwise.0", "head.2"], "block2's depthwise too"
    assert report["quantization"]["scheme"].startswith("W4/8A8") and "block2 4-bit" in report["quantization"]["scheme"]
    model = onnx.load(str(out / "model.onnx"))
    levels = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_quantized")}
    narrow = sorted(name for name, a in levels.items() if a.dtype == np.int8 and a.ndim >= 2 and np.abs(a).max() <= 7)
    assert len(narrow) == 3 and all(name.startswith(("block2", "expand")) for name in narrow), narrow
    assert (out / "model.int4.onnx").is_file() and report["evaluation"]["int8_accuracy"] > 0.9
    assert run(["compress", "--recipe", str(out / "recipe.toml"), "-o", str(tmp_path / "again"), "--quiet"]) == 0
    assert (tmp_path / "again" / "model.tflite").read_bytes() == (out / "model.tflite").read_bytes()
    for bad, message in (("blok2=4", "no layer named blok2; did you mean block2?"), ("block2=3", "is not NAME=4 or NAME=8")):
        capfd.readouterr()
        assert run([*argv, "-o", str(tmp_path / "bad"), "--layer-bits", bad]) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
        assert not (tmp_path / "bad").exists()
