"""Dropping whole transformer encoder layers (edgetune/prune/layers.py, ``--prune layers:N``):
the layers found from their attention and feed-forward blocks in post-norm (BERT) and pre-norm
(GPT-style) encoders, the graph with a layer dropped equal to the model with that layer left
out, the least useful layers chosen on calibration data, and both artifacts written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_text_import import NAMES, _tokens
from torch import nn

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.errors import InputError
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.ir.passes import drop_dead
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.prune import parse_prune
from edgetune.prune.layers import drop_layers, find_layers
from edgetune.zoo.bert import BertEncoder, BertLayer

LENGTH = 16


class PreNormLayer(BertLayer):
    """The same weights applied pre-norm: x + attention(norm1(x)), then x + feed-forward(norm2(x))."""

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
        if bias is not None:
            scores = scores + bias
        x = x + self.output((scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape))
        return x + self.out(nn.functional.gelu(self.intermediate(self.norm2(x))))


def encoder(style: str, layers: int = 4) -> BertEncoder:
    torch.manual_seed(0)
    model = BertEncoder(layers=layers)
    if style == "pre":
        model.layers = nn.ModuleList(PreNormLayer(32, 4, 128) for _ in range(layers))
    for layer in model.layers:  # weights far enough from their start that every layer matters
        for p in layer.parameters():
            p.data += 0.05 * torch.randn(p.shape)
    return model.eval()


class Renamed(nn.Module):
    """Another model's layer names (a student made separately shares none with its teacher)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.small = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.small(input_ids, attention_mask, token_type_ids)


def _inputs(count: int = 32) -> np.ndarray:
    return _tokens(count, 3)


def _run(graph, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return run_batches(GraphRunner(graph, quantized=False), x[:, : len(graph.inputs)])


def _without(model: BertEncoder, index: int) -> BertEncoder:
    smaller = copy.deepcopy(model)
    smaller.layers = nn.ModuleList(layer for i, layer in enumerate(model.layers) if i != index)
    return smaller


@pytest.mark.parametrize("style", ["post", "pre"])
def test_a_dropped_layer_equals_the_model_without_it(style: str) -> None:
    model = encoder(style)
    graph = capture(model, (LENGTH,), "int64", tuple(NAMES))
    layers = find_layers(graph)
    assert [layer.index for layer in layers] == [0, 1, 2, 3] and all(len(layer.layers) == 6 for layer in layers)
    x = _inputs()
    feeds = [torch.from_numpy(x[:, i]) for i in range(len(NAMES))]
    for index in (0, 2, 3):
        dropped = copy.deepcopy(graph)
        layer = find_layers(dropped)[index]
        dropped.rename_input(layer.exit, layer.entry)
        drop_dead(dropped)
        with torch.no_grad():
            expected = _without(model, index)(*feeds).numpy()
        np.testing.assert_allclose(_run(dropped, x), expected, atol=2e-5)
        assert sum(node.op == "linear" for node in dropped.nodes) == sum(node.op == "linear" for node in graph.nodes) - 6
        assert len(find_layers(dropped)) == 3, "the rest still chain"


def test_the_least_useful_layers_go_first_and_without_data_the_top_ones() -> None:
    model = encoder("post")
    with torch.no_grad():  # layer 1 barely changes its input: its projections are nearly zero
        for p in (model.layers[1].output.weight, model.layers[1].output.bias, model.layers[1].out.weight, model.layers[1].out.bias):
            p.mul_(1e-3)
    graph = capture(model, (LENGTH,), "int64", tuple(NAMES))
    x = _inputs(64)
    report = drop_layers(copy.deepcopy(graph), 2, x)
    first, second = report["steps"]
    others = [change for index, change in first["output_change"].items() if index != 1]
    assert first["dropped"] == 1 and first["output_change"][1] < min(others) / 5, first
    assert second["dropped"] != 1 and set(second["output_change"]) == {0, 2, 3}
    assert report["before"] == 4 and report["after"] == 2 and report["kept"] == sorted({0, 2, 3} - {second["dropped"]})
    blind = drop_layers(copy.deepcopy(graph), 2)
    assert blind["dropped"] == [2, 3] and blind["criterion"] == "top layers"
    with pytest.raises(InputError, match="layers:4 would drop all 4 encoder layers"):
        drop_layers(copy.deepcopy(graph), 4, x)


def test_prune_text_joins_layers_to_a_ratio() -> None:
    config = parse_prune("layers:2+channel:0.5")
    assert (config.drop_layers, config.ratio, config.kind) == (2, 0.5, "channel")
    assert parse_prune("layers:1").drop_layers == 1 and parse_prune("layers:1").ratio == 0.0
    for bad in ("layers:0", "layers:x", "layers:1+layers:2", "channel:0.5+magnitude:0.5"):
        with pytest.raises(InputError):
            parse_prune(bad)


def test_compress_drops_layers_and_prunes_the_rest_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("from test_prune_layers import encoder\n\ndef build():\n    return encoder('post')\n")
    x = _inputs(160)
    np.savez(tmp_path / "calib.npz", **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    argv = ["compress", f"{tmp_path / 'model.py'}:build", "--calib", str(tmp_path / "calib.npz"), "--prune", "layers:2+channel:0.5"]
    assert run([*argv, "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    layers = report["pruning"]["layers"]
    assert layers["before"] == 4 and layers["after"] == 2 and "calibration samples" in layers["criterion"]
    neurons = [g for g in report["pruning"]["groups"] if g.get("kind") == "neurons"]
    assert len(neurons) == 2 and all(g["after"] == 64 for g in neurons)
    assert report["pruning"]["macs"]["ratio"] < 0.5
    sample = x[:8]
    onnx_out = OnnxRunner((out / "model.onnx").read_bytes()).run(sample)
    tflite_out = TfliteRunner((out / "model.tflite").read_bytes()).run(sample)
    assert onnx_out.shape == tflite_out.shape == (8, 32)
    cosine = (onnx_out * tflite_out).sum(1) / np.linalg.norm(onnx_out, axis=1) / np.linalg.norm(tflite_out, axis=1)
    assert cosine.min() > 0.99


def test_layers_on_a_model_without_encoder_layers_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "layers:1", "-o", str(tmp_path / "z")]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: layers:1 drops transformer encoder layers, and edgetune finds none") and "\n" not in err, err
    assert not (tmp_path / "z").exists()


def test_distillation_pairs_states_by_name_after_dropping_and_uniformly_across_models() -> None:
    from edgetune.finetune.hidden import hidden_loss, matched_states
    from edgetune.prune import PruneConfig, prune_channels

    teacher = capture(encoder("post"), (LENGTH,), "int64", tuple(NAMES))
    student = copy.deepcopy(teacher)
    same = matched_states(student, teacher, attention=True)
    kinds = [pair.kind for pair in same.pairs]
    assert same.layer_map == "by name" and kinds == ["hidden"] * 9 + ["attention"] * 4  # embeddings + 2 per layer; 4 maps

    drop_layers(student, 1, _inputs(16))
    prune_channels(student, PruneConfig(0.5, heads=0.5))
    dropped = matched_states(student, teacher, attention=True)
    assert [pair.kind for pair in dropped.pairs] == ["hidden"] * 7 + ["relation"] * 3, "heads pruned: value relations"
    assert all(pair.student == pair.teacher for pair in dropped.pairs)

    other = capture(Renamed(encoder("post", layers=2)), (LENGTH,), "int64", tuple(NAMES))  # a model of its own
    uniform = matched_states(other, teacher, attention=True)
    assert uniform.layer_map == "uniform" and len(uniform.pairs) == 5 + 2
    hidden = [pair for pair in uniform.pairs if pair.kind == "hidden"]
    teacher_norms = [n.outputs[0] for n in teacher.nodes if n.op == "layer_norm"]
    assert hidden[0].teacher == teacher_norms[0] and hidden[-1].teacher == teacher_norms[-1]

    x = torch.from_numpy(_inputs(4)[:, :3])
    states: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
    GraphRunner(student, quantized=False)(x, lambda n, v: states["s"].__setitem__(n, v))
    GraphRunner(teacher, quantized=False)(x, lambda n, v: states["t"].__setitem__(n, v))
    loss = hidden_loss(states["s"], states["t"], dropped)
    assert torch.isfinite(loss) and loss > 0
    assert hidden_loss(states["t"], states["t"], same) < 1e-6, "a model against itself loses nothing"
