"""Recovery: a budgeted fine-tune that wins back what pruning lost."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edgetune import zoo
from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.data import Dataset, load_dataset
from edgetune.errors import InputError
from edgetune.finetune import FinetuneConfig, finetune, parse_budget
from edgetune.prune import PruneConfig, prune_channels


@pytest.mark.parametrize(
    ("text", "kind", "amount"),
    [("90s", "seconds", 90), ("5m", "seconds", 300), ("500steps", "steps", 500), ("1step", "steps", 1), ("3epochs", "epochs", 3)],
)
def test_budgets(text: str, kind: str, amount: float) -> None:
    budget = parse_budget(text)
    assert (budget.kind, budget.amount) == (kind, amount)
    assert budget.deterministic == (kind != "seconds")


@pytest.mark.parametrize("text", ["", "90", "fast", "-3steps", "0s"])
def test_bad_budgets(text: str) -> None:
    with pytest.raises(InputError):
        parse_budget(text)


def _pruned_digits():  # type: ignore[no-untyped-def]
    graph = capture(zoo.digits_cnn(), (1, 8, 8))
    teacher = copy.deepcopy(graph)
    prune_channels(graph, PruneConfig(0.5, channel_multiple=8))
    return graph, teacher


def test_recovery_after_pruning_with_labels_and_distillation() -> None:
    graph, teacher = _pruned_digits()
    report = finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("400steps")), teacher=teacher)
    assert report["steps"] == 400 and report["deterministic"]
    assert report["metric_before"] < 0.5 < 0.9 < report["metric_best"]


def test_distillation_alone_without_labels() -> None:
    graph, teacher = _pruned_digits()
    train = load_dataset("digits", "train")
    unlabelled = Dataset(train.x, None, "digits:train (no labels)")
    report = finetune(graph, unlabelled, FinetuneConfig(parse_budget("200steps")), teacher=teacher)
    assert report["validation"]["metric"].startswith("top-1 agreement")
    assert report["metric_best"] > report["metric_before"] + 0.3


def test_step_budget_is_repeatable_to_the_byte(tmp_path: Path) -> None:
    outputs = []
    for _ in range(2):
        graph, teacher = _pruned_digits()
        finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("60steps")), teacher=teacher)
        outputs.append(np.concatenate([graph.const(n.inputs[1]).ravel() for n in graph.nodes if n.op in ("conv2d", "linear")]))
    assert outputs[0].tobytes() == outputs[1].tobytes()


def test_cli_prune_then_finetune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path)]
    argv += ["--prune", "channel:0.5", "--finetune", "400steps", "--train", "digits:train", "--quiet", "--json"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["finetune"]["steps"] == 400
    assert report["evaluation"]["int8_accuracy"] > 0.9, "the pruned int8 model is usable again"
    assert report["evaluation"]["tflite"]["top1_agreement_with_onnx_int8"] >= 0.99


def test_finetune_needs_training_data(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "o"), "--finetune", "10steps", "--quiet"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --finetune needs training data") and "\n" not in err


def test_iterative_pruning_recovers_between_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path)]
    argv += ["--prune", "channel:0.5", "--prune-steps", "2", "--finetune", "600steps", "--train", "digits:train", "--quiet", "--json"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in report["pruning"]["steps"]] == [1, 2]
    assert report["finetune"]["config"]["budget"] == "300steps", "the budget is shared between the steps"
    assert report["evaluation"]["int8_accuracy"] > 0.9


def test_learning_rate_warms_up_then_decays() -> None:
    from edgetune.finetune.train import learning_rate

    config = FinetuneConfig(parse_budget("100steps"), lr=1.0, warmup=0.1)
    rates = [learning_rate(config, spent) for spent in (0.0, 0.05, 0.1, 0.55, 1.0)]
    assert (
        rates[0] < rates[1] < rates[2] == pytest.approx(1.0) and rates[3] == pytest.approx(0.5) and rates[4] == pytest.approx(0.0, abs=1e-9)
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_other_optimizers_and_label_smoothing_recover_too(optimizer: str) -> None:
    graph, teacher = _pruned_digits()
    config = FinetuneConfig(parse_budget("300steps"), optimizer=optimizer, lr=3e-2 if optimizer == "sgd" else 3e-3, label_smoothing=0.1)
    report = finetune(graph, load_dataset("digits", "train"), config, teacher=teacher)
    assert report["metric_best"] > report["metric_before"] + 0.3


def test_early_stopping_ends_before_the_budget() -> None:
    graph, teacher = _pruned_digits()
    config = FinetuneConfig(parse_budget("5000steps"), patience=2, eval_every=10)
    report = finetune(graph, load_dataset("digits", "train"), config, teacher=teacher)
    assert report["stopped_early"] and report["steps"] < 5000
    assert report["steps"] - report["best_step"] >= 20
