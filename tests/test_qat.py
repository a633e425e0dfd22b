"""Quantization-aware training: learned scales reach the ONNX and TFLite artifacts exactly."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgetune import zoo
from edgetune.capture import capture
from edgetune.data import load_dataset
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.onnx import write_onnx
from edgetune.export.tflite import write_tflite
from edgetune.finetune import FinetuneConfig, finetune, parse_budget
from edgetune.finetune.qat import SCALE_PREFIX, QatRunner
from edgetune.ir.graph import Graph
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.prune import PruneConfig, prune_channels
from edgetune.quantize import QuantConfig, calibrate


def _calibrated_pruned_digits() -> tuple[Graph, Graph]:
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    teacher = copy.deepcopy(graph)
    prune_channels(graph, PruneConfig(0.5, channel_multiple=8))
    calibrate(graph, load_dataset("digits", "calibration").x[:128], QuantConfig())
    return graph, teacher


def _int8_accuracy(graph: Graph) -> float:
    test = load_dataset("digits", "test")
    out = run_batches(GraphRunner(graph, quantized=True), test.x)
    return float(np.mean(out.reshape(len(out), -1).argmax(1) == test.y))


def _train_by_hand(graph: Graph, steps: int) -> tuple[QatRunner, torch.Tensor]:
    """A few optimizer steps straight on a QatRunner; returns it and the trained model's outputs."""
    train = load_dataset("digits", "train")
    runner = QatRunner(graph)
    params = runner.parameters_by_name()
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    for step in range(steps):
        batch = slice(32 * step, 32 * step + 32)
        loss = torch.nn.functional.cross_entropy(runner(x[batch]).reshape(32, -1), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained = runner(x[:64]).reshape(64, -1)
    runner.commit({name: p.detach().clone() for name, p in params.items()})
    return runner, trained


def test_qat_recovers_the_pruned_int8_model() -> None:
    graph, teacher = _calibrated_pruned_digits()
    before = _int8_accuracy(graph)
    report = finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("300steps"), qat=True), teacher=teacher)
    assert report["qat"]["learned_scales"] > 10 and report["qat"]["weight_scales_widened_for_bias"] == 0
    assert before < 0.5 and _int8_accuracy(graph) > 0.8


def test_committed_graph_reproduces_the_trained_model_bit_for_bit() -> None:
    graph, _ = _calibrated_pruned_digits()
    calibrated = {name: t.quant.scale.copy() for name, t in graph.tensors.items() if t.quant is not None}
    runner, trained = _train_by_hand(graph, 20)
    moved = [name for name in runner.log_scales if not np.array_equal(graph.tensors[name].quant.scale, calibrated[name])]
    assert len(moved) == len(runner.log_scales), "every learnable scale was trained"
    x = torch.from_numpy(load_dataset("digits", "train").x[:64])
    with torch.no_grad():
        simulated = GraphRunner(graph, quantized=True)(x).reshape(64, -1)
    assert torch.equal(simulated, trained)


def test_artifacts_carry_the_trained_scales_exactly() -> None:
    graph, _ = _calibrated_pruned_digits()
    runner, _ = _train_by_hand(graph, 20)
    learned = {name: graph.tensors[name].quant.scale for name in [*runner.key, *runner.weights]}
    onnx_model = write_onnx(graph, quantized=True)
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_model).graph.initializer}
    tflite_model = write_tflite(graph, quantized=True, int8_io=False)
    tflite_scales = {d["name"]: d["quantization_parameters"]["scales"] for d in TfliteRunner(tflite_model).interpreter.get_tensor_details()}
    for name, scale in learned.items():
        assert np.atleast_1d(initializers[f"{name}_scale"]).tobytes() == scale.tobytes(), name
        assert tflite_scales[name].astype(np.float32).tobytes() == scale.tobytes(), name

    # Both runtimes compute what the trained model computes, within the integer kernels' rounding.
    x = load_dataset("digits", "test").x
    simulated = run_batches(GraphRunner(graph, quantized=True), x)
    step = float(graph.tensors[graph.outputs[0]].quant.scale[0])
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    tflite_out = TfliteRunner(tflite_model).run(x)
    for out in (onnx_out, tflite_out):
        lsb = np.abs(out.reshape(simulated.shape) - simulated) / step
        assert lsb.max() <= 2.0 + 1e-3 and np.mean(lsb <= 1.0 + 1e-3) > 0.99


def test_qat_needs_a_calibrated_graph() -> None:
    from edgetune.errors import InputError

    with pytest.raises(InputError, match="calibrated"):
        QatRunner(capture(zoo.digits_cnn(), (1, 8, 8)))


def test_scale_names_are_prefixed() -> None:
    graph, _ = _calibrated_pruned_digits()
    names = QatRunner(graph).parameters_by_name()
    assert any(name.startswith(SCALE_PREFIX) for name in names) and any(not name.startswith(SCALE_PREFIX) for name in names)
