"""Parameter-efficient fine-tuning: bias, lora:R and sparse:MEMORY strategies, the training
state they need (predicted and measured), and plain int8 artifacts after merging."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetune import zoo
from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.data import load_dataset
from edgetune.errors import InputError
from edgetune.finetune import FinetuneConfig, finetune, parse_budget, parse_strategy
from edgetune.finetune.memory import layer_costs
from edgetune.finetune.sparse import choose
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.prune import PruneConfig, prune_channels


def _pruned_digits() -> tuple[Graph, Graph]:
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    teacher = copy.deepcopy(graph)
    prune_channels(graph, PruneConfig(0.5, channel_multiple=8))
    return graph, teacher


def _weights(graph: Graph) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    out = {}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            bias = graph.const(node.inputs[2]).copy() if len(node.inputs) > 2 and node.inputs[2] else None
            out[node.name] = (graph.const(node.inputs[1]).copy(), bias)
    return out


def _tune(strategy: str, steps: str = "150steps", **options: object) -> tuple[Graph, dict, dict]:  # type: ignore[type-arg]
    graph, _ = _pruned_digits()
    before = _weights(graph)
    config = FinetuneConfig(parse_budget(steps), lr=0.03, strategy=parse_strategy(strategy), **options)  # type: ignore[arg-type]
    report = finetune(graph, load_dataset("digits", "train"), config)
    return graph, before, report


@pytest.mark.parametrize(
    "text",
    [
        *("bias", "head+bias", "lora:8", "head+lora:4", "bias+lora:2", "last:2+lora:4", "gradual+lora:2", "sparse:256kb"),
        *("head+sparse:1.5MB", "bias+lite", "head+bias+lite", "lite"),
    ],
)
def test_strategies_parse_and_print_back(text: str) -> None:
    strategy = parse_strategy(text)
    assert strategy.efficient and parse_strategy(str(strategy)) == strategy


@pytest.mark.parametrize(
    "text",
    [
        *("full+bias", "lora:0", "lora:x", "bias+bias", "head+last:2", "sparse:lots", "lora:4+sparse:1MB", "adapter:4"),
        *("lite+lora:4", "lite:2", "full+lite", "sparse:1MB+lite"),
    ],
)
def test_bad_strategies_are_one_error(text: str) -> None:
    with pytest.raises(InputError) as error:
        parse_strategy(text)
    assert any(word in str(error.value) + error.value.hint for word in ("bias, lora:R, sparse", "sparse", "memory", "lite"))


def test_bias_only_trains_biases_and_nothing_else() -> None:
    graph, before, report = _tune("bias")
    after = _weights(graph)
    assert report["metric_best"] > report["metric_before"]
    for name, (weight, _) in before.items():
        assert np.array_equal(after[name][0], weight), f"{name}: a frozen weight moved"
    assert any(not np.array_equal(after[name][1], bias) for name, (_, bias) in before.items() if bias is not None)


def test_bias_only_gives_a_layer_without_one_a_zero_bias_first() -> None:
    graph, _ = _pruned_digits()
    head = next(node for node in reversed(graph.nodes) if node.op in WEIGHTED_OPS)
    del head.inputs[2:]
    report = finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("20steps"), strategy=parse_strategy("bias")))
    assert report["updates"]["zero_biases_added"] == 1 and len(head.inputs) == 3 and graph.const(head.inputs[2]).any()


def test_lora_updates_have_the_rank_asked_for_and_merge_into_the_weights() -> None:
    graph, before, report = _tune("lora:2")
    after = _weights(graph)
    assert report["metric_best"] > report["metric_before"] + 0.3, "rank-2 updates recover the pruned model"
    full_rank = set(report["updates"].get("lora_full_rank_layers", []))
    updated = 0
    for name, (weight, bias) in before.items():
        delta = (after[name][0] - weight).reshape(len(weight), -1).astype(np.float64)
        if name in full_rank:
            continue
        assert np.linalg.matrix_rank(delta, tol=1e-6 * max(np.abs(delta).max(), 1e-12)) <= 2, name
        assert bias is None or np.array_equal(after[name][1], bias), "lora alone leaves biases frozen"
        updated += int(np.abs(delta).max() > 0)
    assert updated == report["updates"]["lora_layers"] > 0


def test_the_sparse_update_trains_only_the_channels_it_chose_within_its_budget() -> None:
    graph, before, report = _tune("sparse:40kb")
    after, sparse = _weights(graph), report["updates"]["sparse"]
    chosen = sparse["layers"]
    assert chosen and sum(chosen.values()) < len(before), "40 KB cannot train every channel of the pruned CNN"
    for name, (weight, _) in before.items():
        changed = np.abs(after[name][0] - weight).reshape(len(weight), -1).max(1) > 0
        assert changed.sum() <= round(chosen.get(name, 0.0) * len(weight)), name
    state = report["memory"]["training_state"]
    assert state["measured_bytes"] <= state["budget_bytes"] == 40_000
    assert 0.5 <= state["predicted_bytes"] / state["measured_bytes"] <= 2.0, state


def test_a_sparse_update_needs_a_fraction_of_full_fine_tuning_memory() -> None:
    _, _, full = _tune("full", "5steps")
    _, _, sparse = _tune("sparse:150kb", "5steps")
    assert sparse["memory"]["training_state"]["measured_bytes"] < 0.3 * full["memory"]["training_state"]["measured_bytes"]
    assert full["batch_size"] == sparse["batch_size"], "the optimizer sees the same batch (in micro-batches when the plan cuts it)"


def test_sparse_choice_goes_where_the_gradient_is() -> None:
    graph, _ = _pruned_digits()
    costs = layer_costs(graph)
    scores = {cost.name: np.full(cost.channels, 1e-6) for cost in costs}
    target = costs[-2]
    scores[target.name] = np.linspace(1.0, 2.0, target.channels)
    plan = choose(graph, scores, 400_000, 32, {}, False)
    assert target.name in plan.channels and plan.estimate <= 400_000
    assert plan.channels[target.name][-1] == target.channels - 1, "the largest-gradient channels come first"


def test_a_budget_below_the_sparse_minimum_names_the_minimum(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "o"), "--quiet"]
    argv += ["--prune", "channel:0.5", "--finetune", "10steps", "--train", "digits", "--finetune-strategy", "sparse:0.1kb"]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: a training-memory budget of 0 KB") and "raise sparse:MEMORY to at least" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_lora_needs_a_layer_to_update() -> None:
    import torch

    graph, _ = _pruned_digits()
    layers = sum(node.op in WEIGHTED_OPS for node in graph.nodes)
    train = load_dataset("digits", "train")
    with pytest.raises(InputError, match="lora:R has no layer"):
        finetune(graph, train, FinetuneConfig(parse_budget("5steps"), strategy=parse_strategy(f"last:{layers}+lora:2")))
    plain = capture(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Softmax(1)), (1, 8, 8))
    with pytest.raises(InputError, match="lora:R has no layer"):
        finetune(plain, train, FinetuneConfig(parse_budget("5steps"), strategy=parse_strategy("lora:2")))


@pytest.mark.parametrize("strategy", ["head+lora:4", "sparse:200kb"])
def test_merged_artifacts_are_plain_int8_models_in_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str) -> None:
    """QAT with the updates: both files hold the same ops as a full fine-tune's, and agree."""
    base = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--quiet", "--json"]
    base += ["--prune", "channel:0.5", "--finetune", "100steps", "--train", "digits:train", "--qat", "--finetune-lr", "0.03"]
    reports = {}
    for name in ("full", strategy):
        assert run([*base, "--finetune-strategy", name, "-o", str(tmp_path / name.replace(":", "_"))]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    ops = {name: [n.op_type for n in onnx.load(tmp_path / name.replace(":", "_") / "model.onnx").graph.node] for name in reports}
    assert ops[strategy] == ops["full"], "the updates were merged: no extra nodes"
    report = reports[strategy]
    assert report["finetune"]["metric_best"] > report["finetune"]["metric_before"] + 0.2
    assert report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99
    assert parse_strategy(report["finetune"]["config"]["strategy"]) == parse_strategy(strategy)


def test_sparse_qat_keeps_the_scales_before_the_update(tmp_path: Path) -> None:
    """Under QAT, scales learn only where the update's backward pass reaches."""
    from edgetune.quantize import QuantConfig, quantize

    graph, _ = _pruned_digits()
    calib = load_dataset("digits", "calibration")
    quantize(graph, calib.x, QuantConfig())
    scales = {name: t.quant.scale.copy() for name, t in graph.tensors.items() if t.quant is not None and t.data is None}
    config = FinetuneConfig(parse_budget("60steps"), lr=0.03, qat=True, strategy=parse_strategy("sparse:60kb"))
    report = finetune(graph, load_dataset("digits", "train"), config)
    start = report["updates"]["sparse"]["from_layer"]
    first = next(i for i, node in enumerate(graph.nodes) if node.name == start)
    earlier = {name for node in graph.nodes[:first] for name in node.outputs} | set(graph.inputs)
    kept = [name for name in earlier if name in scales]
    assert kept, "some activations lie before the update"
    for name in kept:
        assert np.array_equal(graph.tensors[name].quant.scale, scales[name]), name  # type: ignore[union-attr]


def test_lora_runs_repeat_to_the_byte() -> None:
    runs = [_tune("head+lora:4", "40steps")[0] for _ in range(2)]
    first, second = (_weights(graph) for graph in runs)
    assert all(np.array_equal(first[name][0], second[name][0]) for name in first)


def test_lite_residual_branches_start_at_zero_and_join_each_residual_block() -> None:
    import torch

    from edgetune.finetune.lite import add_lite_residuals
    from edgetune.ir.torch_exec import GraphRunner

    graph, _ = _pruned_digits()
    x = torch.from_numpy(load_dataset("digits", "test").x[:16])
    before = GraphRunner(copy.deepcopy(graph))(x).detach().numpy()
    layers = add_lite_residuals(graph, seed=0)
    assert layers == ["block1.add.lite.conv1", "block1.add.lite.conv2", "block2.add.lite.conv1", "block2.add.lite.conv2"]
    assert np.array_equal(GraphRunner(graph)(x).detach().numpy(), before), "a zero 1x1 convolution: the model is unchanged"
    ops = [node.op for node in graph.nodes if node.name.startswith("block1.add.lite")]
    assert ops == ["avgpool2d", "conv2d", "conv2d", "resize", "add"]
    assert add_lite_residuals(graph, seed=0) == layers and sum(node.op == "avgpool2d" for node in graph.nodes) == 2, "added once"


def test_a_model_without_residual_blocks_gets_branches_on_its_convolutions() -> None:
    import torch

    from edgetune.finetune.lite import add_lite_residuals

    layers = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU()]
    layers += [torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10)]
    graph = capture(torch.nn.Sequential(*layers).eval(), (1, 8, 8))
    add_lite_residuals(graph, seed=0)
    branches = {node.name: node.op for node in graph.nodes if ".lite." in node.name}
    assert {name.split(".lite.")[0] for name in branches} == {"2", "4"}, "every conv after the first; 4x4 -> 2x2 still halves"
    assert "2.lite.up" not in branches and branches["4.lite.up"] == "resize", "a strided block needs no upsampling"
    assert graph.tensors[graph.outputs[0]].shape == (1, 10)


def test_bias_and_lite_train_the_branches_and_leave_the_model_frozen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TinyTL: the frozen model's weights stay, its biases and the branches train, and the
    branches stay in both artifacts, which agree."""
    base = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--quiet", "--json"]
    base += ["--prune", "channel:0.5", "--finetune", "150steps", "--train", "digits:train", "--finetune-lr", "0.03"]
    reports = {}
    for name in ("bias", "bias+lite"):
        assert run([*base, "--finetune-strategy", name, "-o", str(tmp_path / name)]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    lite = reports["bias+lite"]
    assert lite["finetune"]["updates"]["lite_residual"]["modules"] == 2
    assert lite["finetune"]["metric_best"] > reports["bias"]["finetune"]["metric_best"], "the branches add capacity"
    assert lite["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.98
    ops = [n.op_type for n in onnx.load(tmp_path / "bias+lite" / "model.onnx").graph.node]
    assert ops.count("AveragePool") == 2 and ops.count("Resize") == 2
    from edgetune.ir.serialize import load_graph

    plain, tuned = load_graph(tmp_path / "bias" / "model.edgetune"), load_graph(tmp_path / "bias+lite" / "model.edgetune")
    stem = next(node for node in plain.nodes if node.op in WEIGHTED_OPS).inputs[1]
    assert np.array_equal(plain.const(stem), tuned.const(stem)), "frozen weights are the pruned model's in both runs"
    assert np.abs(tuned.const("block2.add.lite.conv2.weight")).max() > 0


def test_lite_modules_refuse_a_fine_tune_of_the_int8_model() -> None:
    with pytest.raises(InputError, match="lite residual modules join the float model before calibration"):
        FinetuneConfig(parse_budget("5steps"), qat=True, strategy=parse_strategy("bias+lite"))
