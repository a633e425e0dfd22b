"""Few-shot learning: episodes, the N-way head, MAML / first-order MAML / Reptile
meta-training (float and through the int8 quantizer), and ``edgetune adapt``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.data import Dataset, load_dataset
from edgetune.errors import InputError
from edgetune.finetune import parse_budget
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.torch_exec import GraphRunner
from edgetune.meta.episodes import class_pool, parse_classes
from edgetune.meta.head import set_way
from edgetune.meta.learn import MetaConfig, _MetaRun, meta_train
from edgetune.zoo import _untrained
from edgetune.zoo.digits import DigitsCNN


def _untrained_digits() -> Graph:
    return capture(_untrained(DigitsCNN, (1, 8, 8)), (1, 8, 8))


def _weights(graph: Graph) -> np.ndarray:
    return np.concatenate(
        [graph.const(name).ravel() for node in graph.nodes if node.op in WEIGHTED_OPS for name in node.inputs[1:3] if name]
    )


def test_classes_parse() -> None:
    assert parse_classes("0-3,7") == (0, 1, 2, 3, 7) and parse_classes(None) is None
    with pytest.raises(InputError):
        parse_classes("a-b")


def test_episodes_relabel_the_classes_they_draw() -> None:
    pool = class_pool(load_dataset("digits", "train"), (0, 1, 2, 3, 4, 5), 4, 15)
    first, second = (pool.episode(4, 3, 5, np.random.default_rng(7)) for _ in range(2))
    assert first.support_x.shape == (12, 1, 8, 8) and first.query_x.shape == (20, 1, 8, 8)
    assert sorted(set(first.support_y)) == [0, 1, 2, 3] and np.array_equal(np.bincount(first.query_y), [5] * 4)
    assert np.array_equal(first.support_x, second.support_x), "seeded"


@pytest.mark.parametrize(
    ("classes", "way", "need", "message"),
    [
        ((0, 1, 2), 4, 5, "3 class(es) to draw from, fewer than --way 4"),
        (None, 4, 10_000, "class 0 of digits:train has"),
        ((0, 42), 2, 5, "class 42"),
    ],
)
def test_episode_inputs_that_cannot_work_are_one_error(classes: tuple[int, ...] | None, way: int, need: int, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        class_pool(load_dataset("digits", "train"), classes, way, need)


def test_an_n_way_head_starts_with_equal_rows() -> None:
    graph = _untrained_digits()
    report = set_way(graph, 3)
    out = GraphRunner(graph)(torch.from_numpy(load_dataset("digits", "test").x[:8])).detach().numpy()
    assert report == {"layer": "head.2", "classes_before": 10, "classes": 3} and out.shape == (8, 3)
    assert np.allclose(out, out[:, :1]), "every class scores the same before adaptation"


def test_second_order_maml_differs_from_first_order() -> None:
    data = load_dataset("digits", "train")
    runs = {
        algo: _MetaRun(_untrained_digits(), data, MetaConfig(parse_budget("1steps"), algo=algo, way=3, shot=2, query=3))
        for algo in ("maml", "fomaml")
    }
    episode = runs["maml"].train_pool.episode(3, 2, 3, np.random.default_rng(0))
    grads = {algo: run.meta_gradient(episode) for algo, run in runs.items()}
    difference = max(float((grads["maml"][k] - grads["fomaml"][k]).abs().max()) for k in grads["maml"])
    assert difference > 1e-6, "the second-order terms are there"
    assert all(torch.isfinite(g).all() for g in grads["maml"].values())


@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile"])
def test_meta_training_learns_to_adapt_and_repeats_to_the_byte(algo: str) -> None:
    data = load_dataset("digits", "train")
    config = MetaConfig(parse_budget("30steps"), algo=algo, way=3, shot=3, query=5, classes=(0, 1, 2, 3, 4, 5), eval_every=10)
    graphs = [_untrained_digits() for _ in range(2)]
    reports = [meta_train(graph, data, config) for graph in graphs]
    assert reports[0]["validation"]["best"] > reports[0]["validation"]["before"] + 0.1
    assert np.array_equal(_weights(graphs[0]), _weights(graphs[1]))
    assert graphs[0].meta["meta_init"]["algo"] == algo and graphs[0].meta["meta_init"]["classes"] == [0, 1, 2, 3, 4, 5]


def _compressed(tmp_path: Path) -> Path:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "c"), "--quiet", "--formats", "onnx"]
    assert run(argv) == 0
    return tmp_path / "c" / "model.edgetune"


def test_meta_training_a_compressed_model_trains_through_its_quantizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgetune.ir.serialize import load_graph

    compressed = _compressed(tmp_path)
    capsys.readouterr()
    argv = ["meta-init", str(compressed), "--tasks", "digits:train", "--classes", "0-5", "--way", "3", "--shot", "3", "--query", "4"]
    assert run([*argv, "--algo", "fomaml", "--budget", "20steps", "-o", str(tmp_path / "m"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["meta_init"]
    assert report["int8"] and report["steps"] == 20 and report["head"]["classes"] == 3
    before, after = load_graph(compressed), load_graph(tmp_path / "m" / "meta.edgetune")
    for name, tensor in after.tensors.items():
        if tensor.quant is not None and tensor.data is None:
            assert np.array_equal(tensor.quant.scale, before.tensors[name].quant.scale), f"{name}: scales are fixed"  # type: ignore[union-attr]
    stem = next(node for node in after.nodes if node.op in WEIGHTED_OPS)
    weight, q = after.const(stem.inputs[1]), after.tensors[stem.inputs[1]].quant
    assert q is not None and (np.abs(weight) <= 127 * q.scale.reshape(-1, 1, 1, 1) + 1e-6).all(), "weights stay inside their int8 grid"
    assert not np.array_equal(weight, before.const(stem.inputs[1]))


def test_adapt_writes_int8_artifacts_for_the_new_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compressed = _compressed(tmp_path)
    capsys.readouterr()
    argv = ["adapt", str(compressed), "--support", "digits:test", "--classes", "6-9", "--shot", "5", "--eval", "digits:test"]
    assert run([*argv, "--steps", "5", "--lr", "0.02", "--strategy", "head", "-o", str(tmp_path / "a"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    adapted, evaluation = report["adapt"], report["evaluation"]
    assert adapted["classes"] == [6, 7, 8, 9] and adapted["examples_per_class"] == {"6": 5, "7": 5, "8": 5, "9": 5}
    assert adapted["steps"] == 5 and adapted["support_accuracy"]["after"] >= adapted["support_accuracy"]["before"]
    assert evaluation["samples"] == int(np.isin(load_dataset("digits", "test").y, [6, 7, 8, 9]).sum()) - 20
    assert evaluation["agreement"] >= 0.98 and evaluation["onnx_accuracy"] > 0.5
    outputs = onnx.load(tmp_path / "a" / "model.onnx").graph.output[0].type.tensor_type.shape.dim
    assert outputs[-1].dim_value == 4
    state = adapted["memory"]
    assert 0.5 <= state["predicted_bytes"] / state["measured_bytes"] <= 2.0, state


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--memory", "1KB"], "KB of training state, above the 1 KB budget"),
        (["--shot", "500"], "fewer than --shot 500"),
        (["--classes", "6,42"], "class 42 of --classes has no example"),
    ],
)
def test_adapt_bad_input_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    compressed = _compressed(tmp_path)
    capfd.readouterr()
    argv = ["adapt", str(compressed), "--support", "digits:test", "-o", str(tmp_path / "a"), "--quiet"]
    if "--classes" not in extra:
        argv += ["--classes", "6-9"]
    assert run([*argv, *extra]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "a").exists()


def test_adapt_refuses_a_float_model_without_calibration_data(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["adapt", "edgetune.zoo:digits_cnn", "--support", "digits:test", "--classes", "6-9", "--shot", "2", "-o", str(tmp_path / "a")]
    assert run(argv) == 2
    assert "is a float model; give --calib DATA" in capfd.readouterr().err


def test_meta_init_bad_input_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["meta-init", "edgetune.zoo:digits_cnn", "--tasks", "digits:train", "--way", "12", "-o", str(tmp_path / "m"), "--quiet"]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err == "error: digits:train has 10 class(es) to draw from, fewer than --way 12; lower --way to 10 or give more classes"


def test_adapting_a_meta_initialization_uses_its_inner_loop() -> None:
    from edgetune.meta.adapt import AdaptConfig, adapt

    graph = _untrained_digits()
    meta_train(
        graph,
        load_dataset("digits", "train"),
        MetaConfig(parse_budget("3steps"), algo="reptile", way=3, shot=2, inner_steps=4, inner_lr=0.05),
    )
    test = load_dataset("digits", "test")
    keep = np.isin(test.y, [7, 8, 9])
    report = adapt(copy.deepcopy(graph), Dataset(test.x[keep][:30], test.y[keep][:30], "digits 7-9"), AdaptConfig())
    assert report["meta_initialized"] and report["steps"] == 4 and report["lr"] == 0.05 and report["classes"] == [7, 8, 9]


@pytest.fixture(scope="module")
def few_shot_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A meta-initialization of the digits CNN (3-way, on 0-5), 5 examples each of 6-9, and the rest of 6-9."""
    from edgetune.ir.serialize import graph_to_bytes

    folder = tmp_path_factory.mktemp("few-shot")
    graph = _untrained_digits()
    config = MetaConfig(parse_budget("20steps"), algo="reptile", way=3, shot=3, inner_steps=3, inner_lr=0.05, classes=(0, 1, 2, 3, 4, 5))
    meta_train(graph, load_dataset("digits", "train"), config)
    (folder / "meta.edgetune").write_bytes(graph_to_bytes(graph))
    test = load_dataset("digits", "test")
    rng = np.random.default_rng(0)
    support = np.concatenate([rng.choice(np.flatnonzero(test.y == c), 5, replace=False) for c in (6, 7, 8, 9)])
    np.savez(folder / "support.npz", x=test.x[support], y=test.y[support])
    rest = np.setdiff1d(np.arange(len(test.x)), support)
    np.savez(folder / "eval.npz", x=test.x[rest], y=test.y[rest])
    return folder


def _from_init(folder: Path, out: Path, *extra: str) -> list[str]:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--train", str(folder / "support.npz")]
    return [*argv, "--eval", str(folder / "eval.npz"), "--set", f"finetune.init={folder / 'meta.edgetune'}", *extra, "-o", str(out)]


def test_a_recipe_fine_tune_starts_from_a_meta_initialization(
    few_shot_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*_from_init(few_shot_files, tmp_path / "a"), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    init, adapted, evaluation = report["meta_init"], report["adapt"], report["evaluation"]
    from edgetune.ir.serialize import load_graph

    assert init["parameters"] == _weights(load_graph(few_shot_files / "meta.edgetune")).size and init["way"] == 3
    assert adapted["meta_initialized"]
    assert adapted["steps"] == 3 and adapted["lr"] == 0.05 and adapted["classes"] == [6, 7, 8, 9], "the inner loop's settings"
    assert adapted["support_accuracy"]["after"] > adapted["support_accuracy"]["before"]
    test = load_dataset("digits", "test")
    assert evaluation["samples"] == min(256, int(np.isin(test.y, [6, 7, 8, 9]).sum()) - 20) and "as 0-3" in evaluation["data"]
    assert evaluation["int8_accuracy"] > 0.4 and evaluation["tflite"]["top1_agreement_with_onnx_int8"] >= 0.98
    assert onnx.load(tmp_path / "a" / "model.onnx").graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 4
    recipe = (tmp_path / "a" / "recipe.toml").read_text()
    assert 'budget = "3steps"' in recipe and "lr = 0.05" in recipe, "the written recipe names the adaptation it ran"
    assert run(["compress", "--recipe", str(tmp_path / "a" / "recipe.toml"), "-o", str(tmp_path / "b"), "--quiet"]) == 0
    for name in ("model.onnx", "model.tflite"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), f"{name} replays to the byte"


def test_a_meta_initialization_adapts_int8_with_qat_and_its_own_budget(
    few_shot_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--qat", "--finetune", "7steps", "--finetune-lr", "0.02", "--finetune-strategy", "bias", "--quiet", "--json"]
    assert run([*_from_init(few_shot_files, tmp_path / "a"), *extra]) == 0
    adapted = json.loads(capsys.readouterr().out)["adapt"]
    assert adapted["int8"] and adapted["steps"] == 7 and adapted["lr"] == 0.02 and adapted["strategy"] == "bias"


def _other_model_init(folder: Path, tmp_path: Path) -> Path:
    """The meta-initialization with its first conv cut to half its channels."""
    from edgetune.ir.serialize import graph_to_bytes, load_graph

    graph = load_graph(folder / "meta.edgetune")
    stem = next(node for node in graph.nodes if node.op in WEIGHTED_OPS)
    tensor = graph.tensors[stem.inputs[1]]
    assert tensor.data is not None
    tensor.data = tensor.data[: len(tensor.data) // 2].copy()
    tensor.shape = tensor.data.shape
    (tmp_path / "other.edgetune").write_bytes(graph_to_bytes(graph))
    return tmp_path / "other.edgetune"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("lora", "finetune.strategy head+lora:4 has no few-shot form"),
        ("no train", "finetune.init adapts to data.train's classes, and no data.train is given"),
        ("missing", "does not exist; give the meta.edgetune that edgetune meta-init wrote"),
        ("not meta", "holds no meta-initialization; write one with edgetune meta-init"),
        ("other model", "was meta-trained on another model: stem.0 has a 8x1x3x3 weight there, 16x1x3x3 here"),
    ],
)
def test_meta_initialization_errors_are_one_line(
    few_shot_files: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    argv = _from_init(few_shot_files, tmp_path / "a", "--quiet")
    if case == "lora":
        argv += ["--finetune-strategy", "head+lora:4"]
    elif case == "no train":
        at = argv.index("--train")
        del argv[at : at + 2]
    else:
        init = {"missing": tmp_path / "none.edgetune", "not meta": _compressed(tmp_path), "other model": None}[case]
        init = init or _other_model_init(few_shot_files, tmp_path)
        argv[argv.index(f"finetune.init={few_shot_files / 'meta.edgetune'}")] = f"finetune.init={init}"
    capfd.readouterr()
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "a").exists()


def test_adapted_artifacts_name_the_adapted_classes(few_shot_files: Path, tmp_path: Path) -> None:
    from edgetune.ir.serialize import load_graph

    assert run([*_from_init(few_shot_files, tmp_path / "a"), "--quiet"]) == 0
    data = load_graph(tmp_path / "a" / "model.edgetune").meta["data"]
    assert data["labels"] == ["6", "7", "8", "9"] and data["adapted"], data
    assert b'"labels": ["6", "7", "8", "9"]' in (tmp_path / "a" / "model.tflite").read_bytes()
