"""The float stream and the outlier split (quantize/stream.py) on BERT-shaped encoders with
planted outlier channels, run by the real ONNX Runtime and LiteRT."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from text_encoder import SentenceEncoder, classifier, sentence

from edgetune.capture import capture
from edgetune.evaluate.metrics import cosines, sqnr_db
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.export.tflite import write_tflite
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.quantize import stream
from edgetune.quantize.calibrate import calibrate
from edgetune.quantize.config import QuantConfig
from edgetune.zoo.digits import digits_cnn

LENGTH, VOCAB = 16, 100


def outlier_encoder() -> torch.nn.Module:
    """A sentence encoder whose inner LayerNorms each give one channel values ten to thirty
    times the others', as trained BERTs do (Bondarenko et al., 2021), and whose feed-forward
    expansion has one large unit (GELU's input outlier). The last LayerNorm, which the
    pooling averages, is left plain."""
    torch.manual_seed(0)
    model = SentenceEncoder(vocab=VOCAB, length=LENGTH, dim=32, layers=2, heads=4).eval()
    with torch.no_grad():
        model.norm.weight[3], model.norm.bias[3] = 20.0, -10.0
        for index, layer in enumerate(model.layers):
            layer.norm1.weight[5 + index], layer.norm1.bias[5 + index] = 25.0, 5.0
            layer.intermediate.bias[11] = 20.0
        model.layers[0].norm2.weight[7] = -30.0
    return model


def ids(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (count, LENGTH)).astype(np.int64)


def calibrated(model: torch.nn.Module, samples: int = 64) -> object:
    graph = capture(model, (LENGTH,), "int64")
    calibrate(graph, ids(samples, 0), QuantConfig(samples=samples))
    return graph


def onnx_run(blob: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 8]})[0] for i in range(0, len(x), 8)])


def eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_parts_only_for_clear_outliers() -> None:
    flat = np.linspace(1.0, 2.0, 64)
    assert stream.copies(flat).max() == 1  # nothing stands out
    spiky = flat.copy()
    spiky[[3, 9]] = [20.0, 7.0]
    parts = stream.copies(spiky)
    threshold = np.sort(spiky)[::-1][stream.MIN_OUTLIERS]  # 64 channels: the minimum applies
    np.testing.assert_array_equal(parts, np.maximum(1, np.ceil(spiky / threshold - 1e-6)))  # each part at most the threshold
    assert parts[3] == 11 and parts[9] == 4 and parts.sum() - parts.size == 15
    assert set(np.unique(stream.copies(spiky, powers_of_two=True))) <= {1, 2, 4, 8, 16}
    capped = stream.copies(spiky, extra_cap=8)  # the threshold rises until the copies fit
    assert capped.sum() - capped.size <= 8 and capped[3] > 1
    assert stream.copies(spiky, extra_cap=0).max() == 1


def test_the_stream_runs_in_float_and_every_linear_layer_reads_int8() -> None:
    graph = calibrated(outlier_encoder())
    floating = {node.op for node in graph.nodes if node.attrs.get("stream")}
    assert {"layer_norm", "gelu", "softmax", "add"} <= floating
    producers = graph.producers()
    for node in graph.nodes:
        if node.op == "linear":
            assert graph.tensors[node.inputs[0]].quant is not None, node.name
            source = producers[node.inputs[0]]
            assert source.op == "channels" or not source.attrs.get("stream"), f"{node.name} reads a float tensor"
        if node.op == "layer_norm":
            assert graph.tensors[node.outputs[0]].quant is None
    assert graph.tensors[graph.outputs[0]].quant is None  # L2-normalized embedding: float
    split = graph.meta["stream"]["split"]
    assert split["input_channels_added"] > 0 and split["output_rows_scaled"] > 0


def test_a_graph_without_layer_norm_is_left_alone() -> None:
    graph = capture(digits_cnn(), (1, 8, 8))
    calibrate(graph, np.random.default_rng(0).random((16, 1, 8, 8), np.float32), QuantConfig(samples=16))
    assert "stream" not in graph.meta
    assert not any(node.op == "channels" or node.attrs.get("stream") for node in graph.nodes)


def _int8_sqnr(model: torch.nn.Module, graph: object, x: np.ndarray) -> float:
    return sqnr_db(eager(model, x), onnx_run(write_onnx(graph, quantized=True), x))


def test_the_float_stream_raises_accuracy(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = sentence(), ids(96, 1)
    with_stream = _int8_sqnr(model, calibrated(model), x)
    monkeypatch.setattr(stream, "applies", lambda graph: False)  # every tensor int8, as before
    assert with_stream > _int8_sqnr(model, calibrated(model), x) + 6  # measured: 41.8 against 32.2 dB


def test_the_outlier_split_raises_accuracy(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = outlier_encoder(), ids(96, 1)
    graph = calibrated(model)
    split = _int8_sqnr(model, graph, x)
    assert cosines(eager(model, x), onnx_run(write_onnx(graph, quantized=True), x)).mean() > 0.999
    monkeypatch.setattr(stream, "OUTLIER_RATIO", float("inf"))  # the float stream without the split
    unsplit = _int8_sqnr(model, calibrated(model), x)
    monkeypatch.setattr(stream, "applies", lambda graph: False)  # every tensor int8
    # measured: 32.2 dB split, 29.2 without the split, 20.7 all int8
    assert split > unsplit + 1.5 and unsplit > _int8_sqnr(model, calibrated(model), x) + 6


@pytest.mark.parametrize("make", [outlier_encoder, classifier], ids=["sentence-with-outliers", "classifier"])
def test_both_artifacts_and_the_simulation_agree(make) -> None:  # type: ignore[no-untyped-def]
    model, x = make(), ids(32, 2)
    graph = calibrated(model)
    onnx_int8 = onnx_run(write_onnx(graph, quantized=True), x)
    tflite = TfliteRunner(write_tflite(graph)).run(x)
    simulated = run_batches(GraphRunner(graph, quantized=True), x)
    for name, other in (("TFLite", tflite), ("simulation", simulated)):
        assert sqnr_db(onnx_int8, other) > 35, f"ONNX Runtime and {name} differ"
    if graph.tensors[graph.outputs[0]].quant is None:
        assert cosines(onnx_int8, tflite).min() > 0.9995


def test_the_float_artifacts_are_the_model_as_captured() -> None:
    """model.fp32.onnx and model.fp32.tflite come from stream.plain: no outlier split, the
    original weights (output-side rows multiplied back by powers of two, exactly)."""
    model, x = outlier_encoder(), ids(16, 3)
    graph = calibrated(model)
    flat = stream.plain(graph)
    assert not any(node.op == "channels" for node in flat.nodes)
    state = {name.replace(".", "_"): value.numpy() for name, value in model.state_dict().items()}
    for node in (n for n in flat.nodes if n.op == "linear"):
        weight = flat.const(node.inputs[1])
        original = next(v for k, v in state.items() if node.inputs[1].endswith(k))
        np.testing.assert_array_equal(weight, original)
    expected = eager(model, x)
    np.testing.assert_allclose(onnx_run(write_onnx(flat, quantized=False), x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(TfliteRunner(write_tflite(flat, quantized=False)).run(x), expected, rtol=1e-4, atol=1e-5)


def test_calibrating_again_keeps_the_split_and_the_parameters() -> None:
    """The second calibration (QAT, a technique's trial) observes the split graph, whose float
    sums round a little differently: the structure stays, the ranges move by a rounding."""
    model, x = outlier_encoder(), ids(32, 4)
    graph = calibrated(model)
    assert write_onnx(calibrated(model), quantized=True) == write_onnx(graph, quantized=True)  # deterministic
    again = copy.deepcopy(graph)
    calibrate(again, ids(64, 0), QuantConfig(samples=64))
    assert [(n.op, n.inputs, n.attrs) for n in again.nodes] == [(n.op, n.inputs, n.attrs) for n in graph.nodes]
    first, second = (onnx_run(write_onnx(g, quantized=True), x) for g in (graph, again))
    assert sqnr_db(first, second) > 30


@pytest.mark.parametrize("setting", ["float", "off", "smooth"])
def test_the_stream_setting_is_honoured_and_recorded(setting: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import tomllib

    from edgetune.cli.main import run

    (tmp_path / "encoder.py").write_text("from test_stream import outlier_encoder as model\n")
    np.savez(tmp_path / "ids.npz", x=ids(32, 0))
    out = tmp_path / "out"
    command = ["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "ids.npz"), "-o", str(out)]
    assert run([*command, "--stream", setting, "--quiet"]) == 0
    stream_block = json.loads((out / "report.json").read_text())["quantization"].get("stream")
    if setting == "off":
        assert stream_block is None
    elif setting == "smooth":
        assert stream_block["split"] is True and stream_block["smoothed_points"] > 0
    else:
        assert stream_block["float_ops"] > 0 and stream_block["split"] is False and stream_block["input_channels_added"] == 0
    assert tomllib.loads((out / "recipe.toml").read_text())["quantize"]["stream"] == setting


def test_a_stream_setting_needs_the_calibrated_mode() -> None:
    from edgetune.errors import InputError

    with pytest.raises(InputError, match="--stream off"):
        QuantConfig(mode="dynamic-int8", stream="off")


def test_ptq_best_judges_the_split_against_the_float_stream_alone() -> None:
    """--ptq best measures the outlier split on held-out samples against the float stream
    without it, and keeps the split where outliers are planted."""
    from edgetune.quantize.ptq import quantize

    graph = capture(outlier_encoder(), (LENGTH,), "int64")
    _, report = quantize(graph, ids(64, 0), QuantConfig(ptq=("best",), ptq_budget=120), held_out=ids(32, 1))
    scores = report["stream"]["held_out_sqnr_db"]
    chosen = report["stream"]["chosen"]
    assert set(scores) == {"split", "smooth", "float"} and chosen == max(scores, key=scores.get)
    assert chosen != "float" and scores[chosen] > scores["float"] + 1.5  # split 32.7 against float 29.8 dB when written
    assert graph.meta["stream"]["split"]["input_channels_added"] > 0  # type: ignore[index]
    assert bool(graph.meta["stream"]["split"].get("smoothed_points")) == (chosen == "smooth")  # type: ignore[index]


def test_smoothquant_scales_leave_the_product_unchanged() -> None:
    """x / s times the columns multiplied by s is x times the weights; the scales follow
    SmoothQuant's formula up to one common factor, and stay within their limits."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 24)).astype(np.float32)
    x[:, 3] *= 30.0
    weights = [rng.normal(size=(16, 24)).astype(np.float32), rng.normal(size=(8, 24)).astype(np.float32)]
    weights[1][:, 5] = 0.0  # no weight range in one reader: the other sets it
    magnitude = np.abs(x).max(axis=0)
    scales = stream.smooth_scales(magnitude, weights, alpha=0.5)
    columns = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)
    raw = np.sqrt(magnitude) / np.sqrt(columns)
    np.testing.assert_allclose(scales / scales[0], raw / raw[0], rtol=1e-5)
    assert scales[3] == scales.max()  # the outlier channel gives the most to its weights
    for w in weights:
        np.testing.assert_allclose((x / scales) @ (w * scales).T, x @ w.T, rtol=1e-4, atol=1e-3)
    dead = stream.smooth_scales(np.zeros(24), weights)
    np.testing.assert_array_equal(dead, np.ones(24))
    huge = stream.smooth_scales(np.full(24, 1e12), weights)
    assert huge.max() <= stream.SMOOTH_LIMITS[1]


def test_smoothquant_migrates_ranges_and_the_float_artifacts_stay_the_model() -> None:
    """--stream smooth: every linear layer that reads a float tensor gets it divided by its
    scales and its weight columns multiplied; the outlier channels left after that are split.
    The int8 artifacts agree with each other and the simulation; the float ones are the model."""
    model, x = outlier_encoder(), ids(32, 2)
    graph = capture(model, (LENGTH,), "int64")
    calibrate(graph, ids(64, 0), QuantConfig(samples=64, stream="smooth"))
    done = graph.meta["stream"]["split"]  # type: ignore[index]
    points = [n for n in graph.nodes if n.op == "channels" and n.attrs["side"] == "input" and n.attrs.get("smooth")]
    assert done["smoothed_points"] == len(points) > 0
    onnx_int8 = onnx_run(write_onnx(graph, quantized=True), x)
    assert cosines(eager(model, x), onnx_int8).mean() > 0.999
    assert sqnr_db(onnx_int8, TfliteRunner(write_tflite(graph)).run(x)) > 35
    assert sqnr_db(onnx_int8, run_batches(GraphRunner(graph, quantized=True), x)) > 35
    flat = stream.plain(graph)
    expected = eager(model, x)
    np.testing.assert_allclose(onnx_run(write_onnx(flat, quantized=False), x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(TfliteRunner(write_tflite(flat, quantized=False)).run(x), expected, rtol=1e-4, atol=1e-5)


def test_float_islands_lift_a_transformer_where_int16_cannot() -> None:
    """--accuracy-target with --fallback float keeps the most sensitive linear layers in float
    until the held-out SQNR is met; with --fallback int16 the float stream leaves no tensor
    between two 16x8 layers, and the report says to use float."""
    from edgetune.quantize.ptq import quantize

    scores = {}
    for precision in ("float", "int16"):
        graph = capture(outlier_encoder(), (LENGTH,), "int64")
        config = QuantConfig(ptq=(), accuracy_target="38dB", fallback=precision)
        _, report = quantize(graph, ids(64, 0), config, held_out=ids(32, 1))
        scores[precision] = report["fallback"]
    floats = scores["float"]
    assert floats["reached"] and floats["float_layers"] and floats["after"]["sqnr_db"] > floats["before"]["sqnr_db"]
    assert not scores["int16"]["reached"] and "--fallback float" in scores["int16"]["why"]
