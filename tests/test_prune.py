"""Structured channel pruning: groups, ranking, physical removal, and pruned artifacts that run."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune import zoo
from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.ir.graph import Graph
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.prune import PruneConfig, parse_prune, prune_channels
from edgetune.prune.apply import PruneReport, kept_count
from edgetune.prune.groups import find_groups

# Every zoo model but the ViT (its features run along the last axis; heads and neurons are the
# transformer issue's).
ZOO = [name for name in zoo.ZOO if name != "tiny_vit"]


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_prunes_and_keeps_its_output_shape(name: str, ratio: float) -> None:
    entry = zoo.ZOO[name]
    graph = capture(entry.build(), entry.input_shape)
    x = torch.randn(2, *entry.input_shape, generator=torch.Generator().manual_seed(0))
    before = GraphRunner(graph)(x)
    report = prune_channels(graph, PruneConfig(ratio, channel_multiple=4))
    after = GraphRunner(graph)(x)
    assert after.shape == before.shape
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    for node in graph.nodes:  # residual adds stay consistent: both operands keep the same channels
        if node.op == "add":
            shapes = {graph.tensors[name].shape for name in node.inputs if graph.tensors[name].data is None}
            assert len(shapes) == 1, f"{node.name}: {shapes}"


@pytest.mark.parametrize("name", ZOO)
def test_zero_ratio_changes_nothing(name: str) -> None:
    entry = zoo.ZOO[name]
    graph = capture(entry.build(), entry.input_shape)
    x = torch.randn(2, *entry.input_shape, generator=torch.Generator().manual_seed(1))
    before = GraphRunner(graph)(x)
    report = prune_channels(graph, PruneConfig(0.0))
    assert torch.equal(GraphRunner(graph)(x), before) and report.macs_after == report.macs_before


def test_residual_network_prunes_its_tied_channels_together() -> None:
    graph = capture(zoo.efficientnet_lite0(), (3, 224, 224))
    groups = find_groups(graph)
    # Stages with residual adds: one group holds the block outputs tied by the adds.
    tied = [g for g in groups if sum(1 for t in g.tensors if any(n.op == "add" and n.outputs[0] == t for n in graph.nodes)) >= 2]
    assert tied and all(not g.blocked for g in tied)
    assert all(len(g.producers) >= 2 for g in tied), "each add joins the outputs of two or more projection convs"
    classifier = [g for g in groups if any(n.op == "linear" for n in g.producers)]
    assert classifier and all(g.blocked for g in classifier), "the graph output keeps all its channels"


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 1, bias=False)
        self.second = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            # channel 0: one large weight (l1 3, l2 3); channel 1: four small ones (l1 4, l2 2)
            self.first.weight.copy_(torch.tensor([[[[3.0]]], [[[1.0]]]]))
            self.second.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class FourWide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 2, 1, bias=False)
        self.second = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]]).reshape(2, 4, 1, 1))
            self.second.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


@pytest.mark.parametrize(("criterion", "kept_row"), [("l1", [1.0, 1.0, 1.0, 1.0]), ("l2", [3.0, 0.0, 0.0, 0.0])])
def test_criteria_rank_channels_by_their_norm(criterion: str, kept_row: list[float]) -> None:
    graph = capture(FourWide(), (4, 2, 2))
    prune_channels(graph, PruneConfig(0.5, criterion))
    first = graph.nodes[0]
    assert graph.const(first.inputs[1]).reshape(-1).tolist() == kept_row
    assert graph.tensors[first.outputs[0]].shape[1] == 1
    assert graph.const(graph.nodes[1].inputs[1]).shape == (1, 1, 1, 1), "the consumer lost the matching input channel"


def test_kept_count_rounds_to_the_channel_multiple() -> None:
    assert kept_count(32, 0.5, 8) == 16 and kept_count(24, 0.5, 8) == 16 and kept_count(20, 0.7, 8) == 8
    assert kept_count(3, 0.9, 1) == 1 and kept_count(4, 0.5, 16) == 4


@pytest.mark.parametrize("text", ["channel:1.0", "channel:-0.1", "channel:abc", "magnitude:0.5:l1", "channel:0.5:hessian", "blocks:0.5"])
def test_bad_prune_specs(text: str) -> None:
    with pytest.raises(InputError):
        parse_prune(text)


def test_pruned_digits_exports_and_runs_on_both_runtimes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "compress",
        "edgetune.zoo:digits_cnn",
        "--calib",
        "digits",
        "--eval",
        "digits:test",
        "-o",
        str(tmp_path),
        "--prune",
        "channel:0.5:l1",
    ]
    assert run([*argv, "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    pruning = report["pruning"]
    assert pruning["config"]["criterion"] == "l1" and pruning["macs"]["ratio"] < 0.5
    assert any(g["after"] < g["before"] for g in pruning["groups"])
    assert report["model"]["macs"] == pruning["macs"]["after"]
    assert report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99
    for name in ("model.onnx", "model.tflite"):
        doc_code = run(["inspect", str(tmp_path / name), "--json"])
        info = json.loads(capsys.readouterr().out)
        assert doc_code == 0 and info["macs"] == pruning["macs"]["after"]


def test_bad_ratio_on_the_command_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "o"), "--prune", "channel:1.5", "--quiet"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and err.startswith("error: pruning ratio 1.5 is outside [0, 1)") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_pruned_graph_matches_a_smaller_dense_model() -> None:
    """Pruning removes channels: the result equals running the sliced weights as a dense model."""
    graph = capture(TwoConvs(), (1, 3, 3))
    prune_channels(graph, PruneConfig(0.5, "l2"))
    x = torch.randn(1, 1, 3, 3)
    expected = (x * 3.0).sum(dim=1, keepdim=True)  # only channel 0 (weight 3) remains, then summed by the 1x1 conv
    np.testing.assert_allclose(GraphRunner(graph)(x).detach().numpy(), expected.numpy(), rtol=1e-6)


class Concatenating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x), torch.relu(self.c(x))], dim=1))


class Transposing(nn.Module):
    """Channels moved off axis 1 by a permutation: the grouping cannot follow them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.a(x) + self.b(x)).permute(0, 2, 1, 3))


def test_unsupported_patterns_fail_naming_the_layers_unless_skipped() -> None:
    graph = capture(Transposing(), (3, 8, 6))
    with pytest.raises(InputError, match=r"cannot follow the channels of a, b through transpose") as info:
        prune_channels(graph, PruneConfig(0.5))
    assert "--prune-skip-unsupported" in info.value.hint
    report = prune_channels(graph, PruneConfig(0.5, skip_unsupported=True))
    kept = [g for g in report.groups if g.get("unsupported")]
    assert len(kept) == 1 and all(g["after"] == g["before"] for g in kept)
    x = torch.randn(2, 3, 8, 6)
    assert GraphRunner(graph)(x).shape == (2, 4, 8, 6)


def _zeroed(graph: Graph, kept: dict[str, np.ndarray]) -> Graph:
    """The unpruned graph with every removed output channel's weights and bias set to zero."""
    zeroed = copy.deepcopy(graph)
    for node in zeroed.nodes:
        if node.name in kept and node.op in ("conv2d", "linear", "conv_transpose2d"):
            removed = np.setdiff1d(np.arange(zeroed.const(node.inputs[1]).shape[0]), kept[node.name])
            for name in node.inputs[1:]:
                zeroed.tensors[name].data = zeroed.const(name).copy()
                zeroed.tensors[name].data[removed] = 0.0  # type: ignore[index]
    return zeroed


class UNetLike(nn.Module):
    """Skip connections concatenated after an upsampling, a concat of a concat, and a
    part concatenated twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc1, self.enc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.dec = nn.Conv2d(24, 8, 3, padding=1)
        self.side = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8 + 24 + 4 + 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = torch.relu(self.enc1(x))
        skip = torch.cat([self.up(torch.relu(self.enc2(e1))), e1], dim=1)
        side = self.side(x)
        return self.head(torch.cat([torch.relu(self.dec(skip)), skip, side, side], dim=1))


def test_pruning_follows_concatenations() -> None:
    graph = capture(UNetLike(), (3, 8, 8))
    original = copy.deepcopy(graph)
    report = prune_channels(graph, PruneConfig(0.5, "l2"), np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    rows = {row["layers"][0]: row for row in report.groups}
    assert all(rows[name]["after"] == rows[name]["before"] // 2 for name in ("enc1", "enc2", "dec", "side")), rows
    assert report.macs_after / report.macs_before < 0.5
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = run_batches(GraphRunner(_zeroed(original, report.kept)), x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-4)
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.export.onnx import write_onnx

    np.testing.assert_allclose(OnnxRunner(write_onnx(graph, quantized=False), spin=False).run(x), expected, rtol=1e-4, atol=1e-4)


def test_magnitude_pruning_zeroes_weights_that_stay_zero_in_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "compress",
        "edgetune.zoo:digits_cnn",
        "--calib",
        "digits",
        "-o",
        str(tmp_path),
        "--prune",
        "magnitude:0.5",
        "--quiet",
        "--json",
    ]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    pruning = report["pruning"]
    assert pruning["config"]["kind"] == "magnitude" and "no faster" in pruning["note"]
    assert all(abs(layer["sparsity"] - 0.5) <= 0.02 for layer in pruning["layers"]), "uniform: every layer at the ratio"
    import onnx
    from onnx import numpy_helper

    weights = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros >= 0.5, "pruned weights quantize to exactly 0"
    dense = tmp_path / "dense"
    assert run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(dense), "--quiet", "--json"]) == 0
    dense_report = json.loads(capsys.readouterr().out)
    assert report["sizes"]["model.tflite_gzip_bytes"] < dense_report["sizes"]["model.tflite_gzip_bytes"]


def test_global_magnitude_allocation_varies_per_layer() -> None:
    from edgetune.prune import prune

    graph = capture(zoo.resnet8(), (3, 32, 32))
    block = prune(graph, PruneConfig(0.6, kind="magnitude", allocation="global"))
    assert abs(block["sparsity"] - 0.6) <= 0.01
    sparsities = [layer["sparsity"] for layer in block["layers"]]
    assert max(sparsities) - min(sparsities) > 0.1


def test_global_channel_allocation_removes_the_share_overall() -> None:
    graph = capture(zoo.efficientnet_lite0(), (3, 224, 224))
    report = prune_channels(graph, PruneConfig(0.5, channel_multiple=8, allocation="global"))
    pruned = [g for g in report.groups if not g["kept_whole"]]
    before, after = sum(g["before"] for g in pruned), sum(g["after"] for g in pruned)
    assert 0.4 <= 1 - after / before <= 0.55
    assert len({round(g["after"] / g["before"], 2) for g in pruned}) > 2, "groups keep different shares"
    assert all(g["after"] % 8 == 0 or g["after"] == g["before"] for g in pruned)
    x = torch.randn(1, 3, 224, 224)
    assert GraphRunner(graph)(x).shape == (1, 1000)


class DeadChannel(nn.Module):
    """Channel 0 has large weights but nothing downstream reads it: its loss gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 1, bias=False)
        self.second = nn.Conv2d(2, 3, 1, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([5.0, 0.1]).reshape(2, 1, 1, 1))
            self.second.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]]).reshape(3, 2, 1, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


@pytest.mark.parametrize(("criterion", "kept_weight"), [("l2", 5.0), ("taylor", 0.1), ("obd", 0.1)])
def test_gradient_criteria_see_what_magnitude_cannot(criterion: str, kept_weight: float) -> None:
    graph = capture(DeadChannel(), (1, 2, 2))
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((16, 1, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    prune_channels(graph, PruneConfig(0.5, criterion), samples, labels)
    assert graph.const(graph.nodes[0].inputs[1]).reshape(-1).tolist() == pytest.approx([kept_weight])


def test_gradient_criteria_without_labels_use_the_models_own_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgetune.data import load_dataset

    calib = load_dataset("digits", "calibration")
    np.savez(tmp_path / "unlabelled.npz", x=calib.x)
    argv = [
        "compress",
        "edgetune.zoo:digits_cnn",
        "--calib",
        str(tmp_path / "unlabelled.npz"),
        "-o",
        str(tmp_path / "o"),
        "--prune",
        "channel:0.25:obd",
    ]
    assert run([*argv, "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pruning"]["config"]["criterion"] == "obd" and report["pruning"]["macs"]["ratio"] < 1.0


def test_protected_layers_and_per_layer_ratios() -> None:
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    names = [g.producers[0].name for g in find_groups(graph) if not g.blocked]
    first, second = names[0], names[1]
    report = prune_channels(graph, PruneConfig(0.5, protect=("first",), overrides=((second, 0.25),)))
    rows = {row["layers"][0]: row for row in report.groups}
    assert rows[first]["after"] == rows[first]["before"] and rows[first]["protected"]
    assert rows[second]["after"] == kept_count(rows[second]["before"], 0.25, 1)


def test_unknown_layer_names_are_refused() -> None:
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    with pytest.raises(InputError, match="no prunable layer named nope"):
        prune_channels(graph, PruneConfig(0.5, protect=("nope",)))


def test_iterative_pruning_reaches_the_target_and_calls_the_recovery_hook() -> None:
    from edgetune.prune import prune

    one_shot = capture(zoo.efficientnet_lite0(), (3, 224, 224))
    one = prune(one_shot, PruneConfig(0.5, channel_multiple=8))
    stepped = capture(zoo.efficientnet_lite0(), (3, 224, 224))
    calls: list[int] = []
    three = prune(stepped, PruneConfig(0.5, channel_multiple=8), steps=3, recover=lambda graph, step: calls.append(step))
    assert calls == [1, 2], "recovery runs between steps, not after the last"
    assert [s["step"] for s in three["steps"]] == [1, 2, 3]
    macs = [s["macs"] for s in three["steps"]]
    assert macs[0] > macs[1] > macs[2]
    # Same final channel counts as one shot (rankings may differ after re-ranking).
    assert [g["after"] for g in three["groups"]] == [g["after"] for g in one["groups"]]
    assert three["macs"]["after"] == one["macs"]["after"] and three["macs"]["before"] == one["macs"]["before"]
    assert [g["before"] for g in three["groups"]] == [g["before"] for g in one["groups"]]


def _digits_accuracy(graph: Graph, test: Dataset) -> float:
    return float((run_batches(GraphRunner(graph), test.x).argmax(1) == test.y).mean())


@pytest.mark.parametrize("spec", ["channel:0.25", "magnitude:0.5"])
def test_batchnorm_reestimation_restores_channel_statistics_and_accuracy(spec: str) -> None:
    from edgetune.data import load_dataset
    from edgetune.prune import prune
    from edgetune.prune.reestimate import reference_stats

    calib, test = load_dataset("digits", "calibration").take(128), load_dataset("digits:test", "test")
    base = capture(zoo.digits_cnn(), (1, 8, 8))
    normalized = [node.name for node in base.nodes if node.attrs.get("batchnorm")]
    assert len(normalized) >= 4  # every ConvBNAct of the digits CNN
    reference = reference_stats(base, calib.x)
    accuracy = {}
    for reestimate in (False, True):
        graph = copy.deepcopy(base)
        config = replace(parse_prune(spec), reestimate=reestimate)
        if config.kind == "channel":  # the report object also says which channels each layer kept
            result = prune_channels(graph, config, calib.x, calib.y)
            report, kept = result.to_dict(), result.kept
        else:
            report, kept = prune(graph, config, calib.x, calib.y), {}
        accuracy[reestimate] = _digits_accuracy(graph, test)
        assert ("batchnorm" in report) == reestimate
    assert report["batchnorm"]["layers"] >= 4 and report["batchnorm"]["median_std_ratio"] < 0.99
    assert spec.startswith("magnitude") or len(kept) >= 2
    # Each layer is back at its old per-channel mean and std, on the channels it kept.
    after = reference_stats(graph, calib.x)
    for name in normalized:
        mean, std = after[name]
        index = kept.get(name)
        want_mean, want_std = (a if index is None else a[index] for a in reference[name])
        np.testing.assert_allclose(mean, want_mean, atol=1e-3 * want_std.max())
        np.testing.assert_allclose(std, want_std, rtol=1e-3, atol=1e-6)
    if spec.startswith("magnitude"):  # the map only scales weights: the zeros stay
        assert report["sparsity"] >= 0.49
        zeros = sum(int((graph.const(n.inputs[1]) == 0).sum()) for n in graph.nodes if n.op in ("conv2d", "linear"))
        total = sum(graph.const(n.inputs[1]).size for n in graph.nodes if n.op in ("conv2d", "linear"))
        assert zeros / total >= 0.49
    assert accuracy[True] > accuracy[False] + 0.1, accuracy


def test_batchnorm_reestimation_leaves_layers_before_the_first_cut_alone() -> None:
    from edgetune.data import load_dataset

    calib = load_dataset("digits", "calibration").take(64)
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    first = graph.nodes[0]
    weight, bias = graph.const(first.inputs[1]).copy(), graph.const(first.inputs[2]).copy()
    report = prune_channels(graph, PruneConfig(0.5, protect=("first",)), calib.x)
    assert report.batchnorm is not None and report.batchnorm["layers"] >= 1
    assert np.array_equal(graph.const(first.inputs[1]), weight) and np.array_equal(graph.const(first.inputs[2]), bias)


def test_cli_reports_batchnorm_reestimation_and_can_turn_it_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "channel:0.25", "--quiet"]
    assert run([*argv, "-o", str(tmp_path / "on")]) == 0
    text = capsys.readouterr().out
    assert "BatchNorm" in text and "re-estimated in" in text
    assert run([*argv, "-o", str(tmp_path / "off"), "--no-prune-bn", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "batchnorm" not in report["pruning"] and report["pruning"]["config"]["reestimate"] is False


def test_a_group_the_channel_multiple_keeps_whole_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "channel:0.5", "--target", "raspberry-pi-5"]
    assert run([*argv, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = [g for g in report["pruning"]["groups"] if g["after"] == g["before"] and not g["kept_whole"]]
    assert kept and all("channel multiple is 16" in g["why"] for g in kept)
    assert "not pruned" in text and "channel multiple is 16" in text


def test_an_int8_file_larger_than_the_float_one_says_why(tmp_path: Path) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "channel:0.75", "-o", str(tmp_path / "out"), "--quiet"]
    assert run(argv) == 0
    sizes = json.loads((tmp_path / "out" / "report.json").read_text())["sizes"]
    assert sizes["int8_to_fp32"] > 1 and "QuantizeLinear/DequantizeLinear" in sizes["note"]
    assert sizes["model.tflite_bytes"] < sizes["model.onnx_bytes"]


class MeanPooled(nn.Module):
    """A CNN that pools with ``x.mean((2, 3))``, as many do instead of a pooling module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_a_spatial_mean_keeps_the_channels_it_pools() -> None:
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.export.onnx import write_onnx

    graph = capture(MeanPooled(), (3, 6, 6))
    report = prune_channels(graph, PruneConfig(0.5, "l2"))
    rows = {row["layers"][0]: row for row in report.groups}
    assert rows["conv2"]["after"] == 8 and not rows["conv2"]["kept_whole"], "the group through the mean is pruned"
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    out = OnnxRunner(write_onnx(graph, quantized=False), spin=False).run(x)
    np.testing.assert_allclose(out, run_batches(GraphRunner(graph), x), rtol=1e-5, atol=1e-5)
    assert out.shape == (4, 5)


class Joined(nn.Module):
    """Two concatenations added together (SqueezeNet's bypass), and a part that reaches a
    concatenation twice (directly and through a nested one): each channel is cut everywhere
    it went."""

    def __init__(self, nested: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 8, 1) for _ in range(4))
        self.head, self.nested = nn.Conv2d(24 if nested else 16, 2, 1), nested

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nested:
            a = self.a(x)
            return self.head(torch.cat([torch.relu(torch.cat([a, self.b(x)], dim=1)), a], dim=1))
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1) + torch.cat([self.c(x), self.d(x)], dim=1))


def _prunes_like_zeroed(model: nn.Module, shape: tuple[int, ...], ratio: float = 0.5) -> tuple[Graph, PruneReport]:
    """Prune ``model`` and check that the smaller graph computes what the original does with
    the removed channels' weights zeroed, in PyTorch and in ONNX Runtime."""
    from edgetune.export.onnx import write_onnx

    graph = capture(model.eval(), shape)
    original = copy.deepcopy(graph)
    report = prune_channels(graph, PruneConfig(ratio, "l2"))
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    expected = run_batches(GraphRunner(_zeroed(original, report.kept)), x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(OnnxRunner(write_onnx(graph, quantized=False), spin=False).run(x), expected, rtol=1e-4, atol=1e-5)
    return graph, report


@pytest.mark.parametrize("nested", [False, True])
def test_concatenations_added_together_or_reached_twice_are_cut_everywhere(nested: bool) -> None:
    _, report = _prunes_like_zeroed(Joined(nested), (3, 4, 4))
    rows = {row["layers"][0]: row for row in report.groups}
    assert rows["a"]["after"] == 4 and rows["b"]["after"] == 4, rows
    if not nested:  # the add ties a to c and b to d: one group each
        assert rows["a"]["layers"] == ["a", "c"] and rows["b"]["layers"] == ["b", "d"]


@pytest.mark.parametrize("name", ["tiny_detector", "tiny_unet"])
def test_half_the_channels_of_a_detector_and_a_segmenter(name: str) -> None:
    """Necks and skips join channels by concatenation: 50% pruning reaches through them."""
    entry = zoo.ZOO[name]
    graph = capture(entry.build(), entry.input_shape)
    original = copy.deepcopy(graph)
    report = prune_channels(graph, PruneConfig(0.5, "l2"))
    assert report.macs_after / report.macs_before <= 0.55
    assert not any(row.get("unsupported") for row in report.groups)
    x = np.random.default_rng(1).standard_normal((2, *entry.input_shape)).astype(np.float32)
    expected = run_batches(GraphRunner(_zeroed(original, report.kept)), x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-3, atol=1e-4)


def test_transposed_convolutions_and_prelu_slopes_follow_the_pruned_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8, init=0.1), nn.ConvTranspose2d(8, 6, 2, 2), nn.ReLU(), nn.Conv2d(6, 2, 1)
    ).eval()
    graph = capture(model, (3, 6, 6))
    original = copy.deepcopy(graph)
    report = prune_channels(graph, PruneConfig(0.5, "l2"))
    widths = {node.op: graph.const(node.inputs[1]).shape for node in graph.nodes if node.op in ("prelu", "conv_transpose2d")}
    assert widths["prelu"][0] == 4 and widths["conv_transpose2d"][:2] == (3, 4), widths
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    expected = run_batches(GraphRunner(_zeroed(original, report.kept)), x)
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-5)


class GroupedConvs(nn.Module):
    """A grouped 3x3 conv (ResNeXt) and a grouped 1x1 conv with fewer outputs (ShuffleNetV1):
    every group keeps the same number of channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.g = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.h, self.head = nn.Conv2d(16, 8, 1, groups=2), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.h(torch.relu(self.g(torch.relu(self.a(x)))))))


class Shuffled(nn.Module):
    """ShuffleNetV2's units: chunk, a branch on one half, concatenation and channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        from edgetune.zoo.mobile import ShuffleUnit

        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.units = nn.Sequential(ShuffleUnit(16, 16, 1), ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(torch.relu(self.stem(x))).mean((2, 3)))


class ScaledFlatten(nn.Module):
    """A learned per-channel scale and a flatten of the whole map into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.scale, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5), nn.Linear(8 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((torch.relu(self.a(x)) * self.scale).flatten(1))


class RecurrentNet(nn.Module):
    """Two recurrent layers (their hidden units: gate rows, state columns) read at the last step."""

    def __init__(self, kind: type[nn.Module], bidirectional: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = kind(6, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
        with torch.no_grad():  # a GRU's first step multiplies its reset gate by b_hn, a constant
            for name, value in self.rnn.named_parameters():  # that the zeroed reference cannot zero
                if name.startswith("bias_hh"):
                    value.zero_()
        self.head = nn.Linear(24 if bidirectional else 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


STRUCTURES: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "grouped-convs": lambda: (GroupedConvs(), (3, 6, 6)),
    "split-and-shuffle": lambda: (Shuffled(), (3, 8, 8)),
    "scale-and-flatten": lambda: (ScaledFlatten(), (3, 4, 4)),
    "gru": lambda: (RecurrentNet(nn.GRU), (8, 6)),
    "lstm-bidirectional": lambda: (RecurrentNet(nn.LSTM, bidirectional=True), (8, 6)),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_pruning_follows_splits_shuffles_grouped_convs_and_recurrent_units(case: str) -> None:
    from edgetune.evaluate.tflite_runtime import TfliteRunner
    from edgetune.export.onnx import write_onnx
    from edgetune.export.tflite import write_tflite
    from edgetune.quantize import QuantConfig, calibrate

    model, shape = STRUCTURES[case]()
    graph, report = _prunes_like_zeroed(model, shape)
    assert report.macs_after / report.macs_before <= 0.6, report.to_dict()["macs"]
    assert not any(row["kept_whole"] for row in report.groups[:-1]), report.groups  # all but the head's group
    x = np.random.default_rng(2).standard_normal((8, *shape)).astype(np.float32)
    expected = run_batches(GraphRunner(graph), x)
    np.testing.assert_allclose(TfliteRunner(write_tflite(graph, quantized=False)).run(x), expected, rtol=1e-4, atol=1e-4)
    calibrate(graph, np.random.default_rng(3).standard_normal((32, *shape)).astype(np.float32), QuantConfig(samples=32, method="minmax"))
    tflite_int8 = TfliteRunner(write_tflite(graph)).run(x)
    onnx_int8 = OnnxRunner(write_onnx(graph, quantized=True), spin=False).run(x)
    lsb = np.abs(tflite_int8 - onnx_int8) / float(graph.tensors[graph.outputs[0]].quant.scale[0])
    assert lsb.max() <= 2.0 + 1e-3 and np.mean(lsb <= 1.0 + 1e-3) >= 0.95


class GroupedOverConcat(nn.Module):
    """A grouped conv whose segments are two layers' outputs: each layer's group alone cannot
    keep its segments equal, so both stay whole."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.g, self.head = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.g(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_a_grouped_conv_that_cannot_stay_balanced_keeps_its_inputs_whole() -> None:
    graph = capture(GroupedOverConcat(), (3, 4, 4))
    with pytest.raises(InputError, match=r"of a, b through conv2d g \(grouped"):
        prune_channels(graph, PruneConfig(0.5))
    report = prune_channels(graph, PruneConfig(0.5, skip_unsupported=True))
    rows = {row["layers"][0]: row for row in report.groups}
    assert rows["a"]["kept_whole"] and rows["b"]["kept_whole"] and rows["g"]["after"] == 4
