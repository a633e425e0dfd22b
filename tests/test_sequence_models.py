"""1-D convolutions and recurrent layers: how they are lowered, named and refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune import zoo
from edgetune.capture import capture
from edgetune.errors import InputError
from edgetune.ir.torch_exec import GraphRunner, run_batches


def test_a_1d_chain_runs_as_one_2d_chain_with_batchnorm_folded() -> None:
    """Reshapes between 1-D layers cancel: only the input's and the head's remain."""
    entry = zoo.ZOO["audio_conv1d"]
    model = entry.build()
    graph = capture(model, entry.input_shape)
    ops = [node.op for node in graph.nodes]
    assert ops.count("reshape") == 2 and "batch_norm" not in ops
    assert all(len(graph.tensors[node.outputs[0]].shape) == 4 for node in graph.nodes if node.op in ("conv2d", "add", "maxpool2d"))
    assert {node.name for node in graph.nodes if node.op == "conv2d"} >= {"stem.0", "blocks.0.conv1", "blocks.3.conv2"}
    x = np.random.default_rng(0).standard_normal((3, *entry.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-4)


def test_recurrent_steps_are_named_after_the_layer_and_share_one_weight() -> None:
    entry = zoo.ZOO["gru_kws"]
    graph = capture(entry.build(), entry.input_shape)
    linears = [node for node in graph.nodes if node.op == "linear"]
    assert {"gru.l0t0_gx", "gru.l1t48_gh", "classifier"} <= {node.name for node in linears}
    weights = {node.inputs[1] for node in linears}
    assert len(weights) == 5, "W_ih and W_hh of two layers, and the classifier's"
    assert len({node.inputs[2] for node in linears}) == len(linears), "a bias per step"
    assert not any(node.name.endswith("_y") for node in graph.nodes), "the unread output sequence is dropped"


class _WithState(nn.Module):
    def __init__(self, **options: object) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, **options)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gru.batch_first:
            return self.gru(x)[0]
        h0 = torch.zeros(1, x.shape[0], 5) + 0.5
        return self.gru(x, h0)[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"batch_first": False}, "a GRU with batch_first=False"), ({"batch_first": True}, "a GRU given an initial state")],
)
def test_recurrent_layers_refuse_what_they_cannot_unroll(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        capture(_WithState(**options).eval(), (6, 4))


def test_linear_over_a_map_is_refused_with_the_way_out() -> None:
    with pytest.raises(InputError, match="a linear layer on a rank-4 tensor"):
        capture(nn.Sequential(nn.Linear(4, 3)).eval(), (2, 6, 4))


def test_a_permute_of_the_batch_axis_is_refused_unless_indexed_at_once() -> None:
    with pytest.raises(InputError, match="moves the batch axis"):
        capture(_Permuted().eval(), (6, 4))


class _Permuted(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 0, 2) * 2.0


def test_the_report_names_the_ops_computed_in_float_and_why(tmp_path: Path) -> None:
    import edgetune

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = edgetune.compress("edgetune.zoo:tiny_vit", str(calib), str(tmp_path / "out"))
    floats = {entry["op"]: entry for entry in result.report["quantization"]["float_ops"]}
    # a ViT: its stream and attention products run in float (quantize/stream.py), the linear layers in int8
    assert {"layer_norm", "gelu", "softmax", "add", "matmul"} <= set(floats) and "linear" not in floats
    assert len(floats["layer_norm"]["layers"]) == 7 and floats["layer_norm"]["files"] == "both"
    assert floats["layer_norm"]["why"].startswith("the float stream")


def test_the_fallback_switches_every_step_that_shares_a_weight() -> None:
    from edgetune.export.tflite import write_tflite
    from edgetune.quantize import QuantConfig, calibrate
    from edgetune.quantize.fallback import Precision

    graph = capture(_LastStep().eval(), (6, 4))
    calibrate(graph, np.random.default_rng(0).standard_normal((16, 6, 4)).astype(np.float32), QuantConfig(samples=16))
    precision = Precision(graph, "float")
    precision.set({"gru.l0t5_gx"})
    steps = [node for node in graph.nodes if node.op == "linear" and node.name.endswith("_gx")]  # they read W_ih
    assert all(node.attrs.get("precision") == "float" for node in steps), "one weight, one precision"
    write_tflite(graph)  # every step's weight is float: the writer accepts it


class _LastStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0][:, -1]


class _Recurrent(nn.Module):
    """A batch-first GRU or LSTM read at its last step, or at its last layer's final state."""

    def __init__(self, kind: type[nn.Module], layers: int = 1, bidirectional: bool = False, read: str = "last") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = kind(4, 10, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(20 if bidirectional else 10, 3)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)
        state = state[0] if isinstance(state, tuple) else state
        return self.head(out[:, -1] if self.read == "last" else state[-1])


def _exported(model: nn.Module, path: Path, steps: int = 7) -> Path:
    """The file PyTorch's TorchScript exporter writes: GRU/LSTM ops, a dynamic batch axis."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(1, steps, 4),), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
        )
    return path


RECURRENT_FILES = {
    "gru-2-layers-state": (nn.GRU, 2, False, "state"),
    "gru-bidirectional": (nn.GRU, 1, True, "last"),
    "lstm-2-layers": (nn.LSTM, 2, False, "last"),
    "lstm-2-layers-bidirectional": (nn.LSTM, 2, True, "last"),
}


@pytest.mark.parametrize("case", list(RECURRENT_FILES))
def test_onnx_gru_and_lstm_import_as_steps_that_share_their_weights(tmp_path: Path, case: str) -> None:
    import onnxruntime as ort

    from edgetune.capture.onnx_import import import_onnx

    kind, layers, bidirectional, read = RECURRENT_FILES[case]
    model = _Recurrent(kind, layers, bidirectional, read)
    path = _exported(model, tmp_path / "rnn.onnx")
    graph = import_onnx(path)
    x = np.random.default_rng(1).standard_normal((3, 7, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(expected, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-5, atol=1e-5)
    linears = [node for node in graph.nodes if node.op == "linear"]
    directions = 2 if bidirectional else 1
    unread = 1 if bidirectional else 0  # out[:, -1] is the last layer's reverse pass at its first step: R never runs
    assert len({node.inputs[1] for node in linears}) == 2 * layers * directions + 1 - unread, "W and R per layer and direction, the head's"
    assert not any(node.op in ("transpose", "gather") for node in graph.nodes), "the time-major tensors leave no op behind"


def test_an_onnx_lstm_compresses_and_prunes_to_both_int8_formats(tmp_path: Path) -> None:
    import edgetune
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    path = _exported(_Recurrent(nn.LSTM, 2), tmp_path / "lstm.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 7, 4)).astype(np.float32))
    result = edgetune.compress(str(path), str(tmp_path / "calib.npz"), tmp_path / "out", prune=0.5)
    assert result.report["pruning"]["macs"]["ratio"] <= 0.6, result.report["pruning"]["macs"]
    x = rng.standard_normal((16, 7, 4)).astype(np.float32)
    tflite = TfliteRunner((tmp_path / "out" / "model.tflite").read_bytes()).run(x)
    onnx_int8 = OnnxRunner(tmp_path / "out" / "model.onnx", spin=False).run(x)
    assert result.graph is not None
    lsb = np.abs(tflite - onnx_int8) / float(result.graph.tensors[result.graph.outputs[0]].quant.scale[0])
    assert lsb.max() <= 2.0 + 1e-3 and np.mean(lsb <= 1.0 + 1e-3) >= 0.95


def _gru_file(path: Path, **options: object) -> Path:
    """A hand-written GRU file, batch-first input [N, 5, 3], hidden 4, reading its last state."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = [
        numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "r"),
        numpy_helper.from_array(np.asarray([0], np.int64), "zero"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["t", "w", "r"], ["seq", "h"], hidden_size=4, **options),
        helper.make_node("Squeeze", ["h", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=consts,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_a_hand_written_onnx_gru_matches_onnx_runtime(tmp_path: Path) -> None:
    """ONNX's own gate order (z, r, h) and a missing bias, not only what PyTorch writes."""
    import onnxruntime as ort

    from edgetune.capture.onnx_import import import_onnx

    path = _gru_file(tmp_path / "gru.onnx", linear_before_reset=1, direction="reverse")
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_batches(GraphRunner(import_onnx(path)), x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "GRU .* uses linear_before_reset=0"),
        ({"linear_before_reset": 1, "activations": ["Relu", "Tanh"]}, "uses other activations than the defaults"),
        ({"linear_before_reset": 1, "clip": 3.0}, "uses a clip"),
    ],
)
def test_an_onnx_gru_the_steps_cannot_compute_fails_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], options: dict[str, object], message: str
) -> None:
    from edgetune.cli.main import run

    path = _gru_file(tmp_path / "gru.onnx", **options)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 5, 3), np.float32))
    assert run(["compress", str(path), "--calib", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    line = capfd.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert __import__("re").search(message, line), line
    assert not (tmp_path / "o").exists()


class _WholeSequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 10, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


def test_an_onnx_file_whose_output_is_the_whole_sequence_is_refused(tmp_path: Path) -> None:
    from edgetune.capture.onnx_import import import_onnx

    with pytest.raises(InputError, match="whole time-major sequence|reads a GRU or LSTM's whole"):
        import_onnx(_exported(_WholeSequence(), tmp_path / "seq.onnx"))


def test_an_onnx_gru_with_a_dynamic_sequence_length_takes_the_length_of_the_data(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import json
    import warnings

    import onnxruntime as ort

    from edgetune.capture.onnx_import import import_onnx
    from edgetune.cli.main import run

    model, path = _Recurrent(nn.GRU).eval(), tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"x": {0: "batch", 1: "steps"}}
        torch.onnx.export(model, (torch.zeros(1, 7, 4),), str(path), dynamo=False, input_names=["x"], dynamic_axes=axes)
    with pytest.raises(InputError, match=r"dynamic dimensions \[\?,4\]") as raised:
        import_onnx(path)
    assert "--input-shape" in raised.value.one_line()
    with pytest.raises(InputError, match=r"takes samples of shape \[\?,4\], not \[9, 5\]"):
        import_onnx(path, (9, 5))
    x = np.random.default_rng(1).standard_normal((2, 11, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_batches(GraphRunner(import_onnx(path, (11, 4))), x), expected, rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 11, 4)).astype(np.float32))
    assert run(["compress", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "o"), "--json", "--quiet"]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["model"]["input_shape"] == [1, 11, 4], report["model"]


class _CausalTcn(nn.Module):
    """A causal TCN block: a padded dilated Conv1d cropped back to causal, then BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.norm1 = nn.Conv1d(4, 8, 3, padding=4, dilation=2), nn.BatchNorm1d(8)
        self.conv2, self.norm2 = nn.Conv1d(8, 8, 3, padding=2), nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)[:, :, :-4]))
        x = torch.relu(self.norm2(self.conv2(x)[:, :, :-2]))
        return self.head(x.mean(2))


def test_batchnorm1d_after_a_causal_crop_is_a_scale_and_shift_in_both_formats() -> None:
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.evaluate.tflite_runtime import TfliteRunner
    from edgetune.export.onnx import write_onnx
    from edgetune.export.tflite import write_tflite
    from edgetune.prune import PruneConfig, prune_channels
    from edgetune.quantize import QuantConfig, calibrate

    model = _CausalTcn().eval()
    graph = capture(model, (4, 20))
    assert "batch_norm" not in [node.op for node in graph.nodes]
    x = np.random.default_rng(1).standard_normal((8, 4, 20)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(TfliteRunner(write_tflite(graph, quantized=False)).run(x), expected, rtol=1e-4, atol=1e-4)
    report = prune_channels(graph, PruneConfig(0.5))
    assert report.macs_after / report.macs_before <= 0.6
    calibrate(graph, np.random.default_rng(2).standard_normal((32, 4, 20)).astype(np.float32), QuantConfig(samples=32))
    tflite_int8 = TfliteRunner(write_tflite(graph)).run(x)
    onnx_int8 = OnnxRunner(write_onnx(graph, quantized=True), spin=False).run(x)
    lsb = np.abs(tflite_int8 - onnx_int8) / float(graph.tensors[graph.outputs[0]].quant.scale[0])
    assert lsb.max() <= 2.0 + 1e-3
