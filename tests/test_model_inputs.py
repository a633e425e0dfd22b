"""MODEL inputs: callables with weights, torch.export .pt2 files and fp32 ONNX files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgetune import zoo
from edgetune.capture.onnx_import import import_onnx
from edgetune.cli.main import run
from edgetune.ir.torch_exec import GraphRunner, run_batches


def _compress(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    code = run(["compress", *argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_pt2_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = torch.export.export(zoo.digits_cnn(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, str(tmp_path / "digits.pt2"))
    report = _compress(capsys, [str(tmp_path / "digits.pt2"), "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path / "o")])
    assert report["evaluation"]["accuracy_drop_pp"] <= 0.3 and report["evaluation"]["fp32_accuracy"] > 0.95


def test_callable_file_with_safetensors_and_pt_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text("from edgetune.zoo.digits import DigitsCNN\n\ndef build():\n    return DigitsCNN()\n")
    state = zoo.digits_cnn().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    accuracies = []
    for weights in ("w.safetensors", "w.pt"):
        argv = [f"{tmp_path / 'net.py'}:build", "--weights", str(tmp_path / weights), "--calib", "digits", "--eval", "digits:test"]
        report = _compress(capsys, [*argv, "-o", str(tmp_path / f"out-{weights}")])
        accuracies.append(report["evaluation"]["fp32_accuracy"])
    assert accuracies[0] == accuracies[1] > 0.95


def test_onnx_input_quantizes_like_the_torch_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path) -> None:
    report = _compress(capsys, [str(digits_out / "model.fp32.onnx"), "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path)])
    torch_report = json.loads((digits_out / "report.json").read_text())
    assert report["evaluation"]["int8_accuracy"] == torch_report["evaluation"]["int8_accuracy"]
    # Tensor names differ, the arithmetic does not: both int8 artifacts give the same outputs.
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    outputs = [ort.InferenceSession(str(d / "model.onnx")).run(None, {"input": x})[0] for d in (tmp_path, digits_out)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _foreign_model() -> onnx.ModelProto:
    """An ONNX graph written the way other exporters write them: standalone BatchNorm, Clip,
    Flatten, a computed Reshape target, MatMul + Add and a Gemm without transB."""
    rng = np.random.default_rng(0)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        init("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.3),
        init("bn_scale", np.array([1.0, 0.5, 2.0, 1.5], np.float32)),
        init("bn_bias", np.array([0.1, -0.2, 0.0, 0.3], np.float32)),
        init("bn_mean", np.array([0.0, 0.1, -0.1, 0.2], np.float32)),
        init("bn_var", np.array([1.0, 0.5, 2.0, 1.0], np.float32)),
        init("lo", np.float32(0.0)),
        init("hi", np.float32(6.0)),
        init("mm", rng.normal(size=(16, 8)).astype(np.float32) * 0.3),
        init("mm_bias", rng.normal(size=(8,)).astype(np.float32)),
        init("gemm_w", rng.normal(size=(8, 5)).astype(np.float32) * 0.3),
        init("gemm_b", rng.normal(size=(5,)).astype(np.float32)),
        init("zero", np.array([0], np.int64)),
        init("minus_one", np.array([-1], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node("Clip", ["b", "lo", "hi"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["p", "target"], ["f"]),
        helper.make_node("MatMul", ["f", "mm"], ["m"]),
        helper.make_node("Add", ["m", "mm_bias"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Gemm", ["ar", "gemm_w", "gemm_b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_foreign_onnx_graph_imports_exactly(tmp_path: Path) -> None:
    path = tmp_path / "foreign.onnx"
    onnx.save(_foreign_model(), str(path))
    graph = import_onnx(path)
    ops = [node.op for node in graph.nodes]
    assert ops == ["conv2d", "maxpool2d", "reshape", "linear", "linear"], ops
    assert graph.nodes[0].act == "relu6" and graph.nodes[3].act == "relu"
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-4)


def test_unsupported_onnx_ops_are_listed_together(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Einsum", ["e", "e"], ["y"], equation="ij,ij->ij")]
    graph = helper.make_graph(
        nodes,
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "odd.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    assert run(["compress", str(tmp_path / "odd.onnx"), "--calib", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    line = capfd.readouterr().err.strip()
    assert line.startswith("error: ") and "Einsum" in line and "Erf" in line and "\n" not in line


def _imported_as_onnx_runs_it(tmp_path: Path, nodes: list, initializer: list, shapes: tuple[list, list], opset: int):  # type: ignore[no-untyped-def, type-arg]
    """A foreign ONNX file of ``nodes`` (input x, output y), imported, and checked against ONNX
    Runtime on the file itself."""
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shapes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *shapes[1]])],
        initializer=initializer,
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9 if opset > 17 else 8), str(path))
    imported = import_onnx(path)
    x = np.random.default_rng(1).standard_normal((2, *shapes[0])).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_batches(GraphRunner(imported), x), expected, rtol=1e-4, atol=1e-4)
    return imported


def test_onnx_activations_import_as_the_captured_ones(tmp_path: Path) -> None:
    """LeakyRelu, and Gelu (opset 20) in both forms, from a foreign file."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.2),
        helper.make_node("Gelu", ["l"], ["g"]),
        helper.make_node("Gelu", ["g"], ["y"], approximate="tanh"),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [w], ([3, 4, 4], [4, 4, 4]), opset=20)
    assert [n.op for n in imported.nodes] == ["conv2d", "leaky_relu", "gelu", "gelu"]
    assert [n.attrs.get("approximate") for n in imported.nodes[2:]] == [False, True]


def test_onnx_conv_transpose_and_prelu_import_as_the_captured_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 4, 3, 3)).astype(np.float32), "w")  # [in, out, kh, kw]
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    slope = numpy_helper.from_array(np.full((4, 1, 1), 0.25, np.float32), "slope")
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        helper.make_node("PRelu", ["t", "slope"], ["y"]),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [w, bias, slope], ([3, 4, 5], [4, 8, 10]), opset=17)
    assert [n.op for n in imported.nodes] == ["conv_transpose2d", "prelu"]


def test_onnx_conv1d_imports_as_a_2d_chain(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((6, 4, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 6, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1], strides=[2]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], dilations=[2]),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [w1, w2], ([4, 16], [5, 4]), opset=17)
    assert [n.op for n in imported.nodes] == ["reshape", "conv2d", "conv2d", "reshape"]


def test_onnx_layer_norm_and_matmul_import_as_the_captured_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    consts = [
        numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "beta"),
        numpy_helper.from_array(np.asarray([0, 2, 1], np.int64), "perm"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node("LayerNormalization", ["p", "gamma", "beta"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("Transpose", ["n"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["n", "t"], ["y"]),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, consts[:3], ([4, 6], [4, 4]), opset=17)
    assert [n.op for n in imported.nodes] == ["linear", "layer_norm", "transpose", "matmul"]


def test_onnx_activations_and_rearrangements_import_as_the_captured_ones(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Elu", ["c"], ["e"], alpha=0.5),
        helper.make_node("Softplus", ["e"], ["s"]),
        helper.make_node("Mish", ["s"], ["m"]),
        helper.make_node("Neg", ["m"], ["n"]),
        helper.make_node("DepthToSpace", ["n"], ["d"], blocksize=2, mode="CRD"),
        helper.make_node("GlobalMaxPool", ["d"], ["y"]),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [w], ([3, 4, 4], [2, 1, 1]), opset=18)
    assert [n.op for n in imported.nodes] == ["conv2d", "elu", "softplus", "mish", "mul", "depth_to_space", "maxpool2d"]


def test_onnx_resize_imports_as_the_captured_one(tmp_path: Path) -> None:
    """torch.onnx's Resize forms: nearest (asymmetric, floor) and bilinear (pytorch_half_pixel)."""
    scales = numpy_helper.from_array(np.asarray([1, 1, 2, 2], np.float32), "scales")
    nearest = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["n"], **nearest),
        helper.make_node("Resize", ["n", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [scales], ([3, 3, 4], [3, 12, 16]), opset=17)
    assert [(n.op, n.attrs["mode"]) for n in imported.nodes] == [("resize", "nearest"), ("resize", "bilinear")]


def test_interpolate_by_a_scale_that_gives_no_whole_size_is_refused() -> None:
    from torch import nn

    from edgetune.capture import capture
    from edgetune.errors import InputError

    with pytest.raises(InputError, match="does not give a whole size"):
        capture(nn.Upsample(scale_factor=1.5), (3, 5, 5))


def _torch_onnx(model: torch.nn.Module, shape: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    """The file PyTorch's TorchScript exporter writes, with a dynamic batch axis."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, *shape),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "b"}},
            opset_version=opset,
        )
    return path


def _matches_torch(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Any:
    imported = import_onnx(path)
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_batches(GraphRunner(imported), x), expected, rtol=1e-4, atol=1e-4)
    return imported


@pytest.mark.parametrize("name", ["ds_cnn", "mobilenet_v3_small", "shufflenet_v2", "audio_conv1d"])
def test_exported_zoo_models_import_and_match_pytorch(tmp_path: Path, name: str) -> None:
    """F.pad's computed pads (DS-CNN), HardSigmoid (MobileNetV3), chunk's computed bounds and
    the channel shuffle (ShuffleNetV2), 1-D pools (the audio CNN)."""
    entry = zoo.ZOO[name]
    model = entry.build().eval()
    imported = _matches_torch(model, entry.input_shape, _torch_onnx(model, entry.input_shape, tmp_path / "m.onnx"))
    from collections import Counter

    from edgetune.capture import capture

    def ops(graph: Any) -> Counter[str]:  # an average over the whole map is written either way, and
        # the import folds a constant added to a conv's output into its bias (HardSigmoid's + 3)
        return Counter("avgpool2d" if node.op == "global_avgpool" else node.op for node in graph.nodes if node.op != "add")

    assert ops(imported) == ops(capture(model, entry.input_shape)), "imports as the captured graph"


class _GeluMlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.fc(x))


def test_gelu_spelled_with_erf_imports_as_one_gelu(tmp_path: Path) -> None:
    model = _GeluMlp()
    imported = _matches_torch(model, (4, 6), _torch_onnx(model, (4, 6), tmp_path / "g.onnx"))
    assert [node.op for node in imported.nodes] == ["linear", "gelu"]


def test_gelu_with_the_half_taken_first_and_a_reciprocal_imports_as_one_gelu(tmp_path: Path) -> None:
    consts = [
        numpy_helper.from_array(np.asarray(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
        numpy_helper.from_array(np.asarray(1.0, np.float32), "one"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "inv_sqrt2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["p"]),
        helper.make_node("Mul", ["x", "half"], ["h"]),
        helper.make_node("Mul", ["h", "p"], ["y"]),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, consts, ([5], [5]), opset=17)
    assert [node.op for node in imported.nodes] == ["gelu"]


class _Attention(torch.nn.Module):
    """timm's attention: one qkv projection reshaped, permuted with the batch moved, unbound."""

    def __init__(self, unbind: bool, sdpa: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.proj, self.unbind, self.sdpa = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16), unbind, sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        qkv = self.qkv(x).reshape(batch, steps, 3, 2, width // 2).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.unbind else (qkv[0], qkv[1], qkv[2])
        if self.sdpa:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * (width // 2) ** -0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, steps, width))


@pytest.mark.parametrize(("unbind", "sdpa"), [(True, False), (False, True)])
def test_onnx_attention_that_picks_q_k_v_from_a_batch_moving_permute_imports(tmp_path: Path, unbind: bool, sdpa: bool) -> None:
    from edgetune.export.tflite import write_tflite
    from edgetune.quantize import QuantConfig, calibrate

    model = _Attention(unbind, sdpa)
    imported = _matches_torch(model, (5, 16), _torch_onnx(model, (5, 16), tmp_path / "a.onnx"))
    assert sum(node.op == "matmul" for node in imported.nodes) == 2
    calibrate(imported, np.random.default_rng(0).standard_normal((8, 5, 16)).astype(np.float32), QuantConfig(samples=8))
    assert write_tflite(imported)


def test_onnx_multihead_attention_fails_in_one_line_with_the_way_out(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    class _SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    path = _torch_onnx(_SelfAttention(), (5, 16), tmp_path / "mha.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 5, 16), np.float32))
    assert run(["compress", str(path), "--calib", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    line = capfd.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line and "moves the batch axis" in line and "PyTorch model" in line


def test_onnx_split_and_keras_hardsigmoid_import_like_onnx_runtime(tmp_path: Path) -> None:
    sizes = numpy_helper.from_array(np.asarray([2, 4], np.int64), "sizes")
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
        helper.make_node("HardSigmoid", ["a"], ["ha"], alpha=0.2, beta=0.5),
        helper.make_node("HardSigmoid", ["b"], ["hb"]),
        helper.make_node("Concat", ["hb", "ha"], ["y"], axis=1),
    ]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [sizes], ([6, 3, 3], [6, 3, 3]), opset=17)
    assert [node.op for node in imported.nodes].count("slice") == 2


def test_a_hardsigmoid_after_a_conv_keeps_its_clamp_when_its_shift_joins_the_bias(tmp_path: Path) -> None:
    w = numpy_helper.from_array(5.0 * np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("HardSigmoid", ["c"], ["y"], alpha=1 / 6, beta=0.5)]
    imported = _imported_as_onnx_runs_it(tmp_path, nodes, [w], ([3, 4, 4], [4, 4, 4]), opset=17)
    assert [(node.op, node.act) for node in imported.nodes] == [("conv2d", "relu6"), ("mul", "none")]


def test_a_constant_too_large_to_fold_is_refused_without_being_allocated(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A ConstantOfShape of 2**33 floats (32 GB) is left unfolded and refused in one line."""
    shape = numpy_helper.from_array(np.asarray([1, 1 << 33], np.int64), "shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=one),
        helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Add", ["x", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "huge.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((4, 4), np.float32))
    assert run(["compress", str(tmp_path / "huge.onnx"), "--calib", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    line = capfd.readouterr().err.strip()
    assert line.startswith("error: ") and "ConstantOfShape" in line and "\n" not in line
