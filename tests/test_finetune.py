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


def _trained_weights(graph) -> bytes:  # type: ignore[no-untyped-def]
    return np.concatenate([graph.const(n.inputs[1]).ravel() for n in graph.nodes if n.op in ("conv2d", "linear")]).tobytes()


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    import os
    import signal

    from edgetune.finetune import parse_augment

    train = load_dataset("digits", "train")
    config = FinetuneConfig(parse_budget("80steps"), eval_every=10, augment=parse_augment("shift:1,noise:0.05,mixup:0.2"))
    graph, teacher = _pruned_digits()
    finetune(graph, train, config, teacher=teacher)

    sent = []

    def ctrl_c_halfway(done: int, total: int, label: str) -> None:
        if done >= 50 and not sent:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGINT)

    checkpoint = tmp_path / "finetune.ckpt"
    stopped, stopped_teacher = _pruned_digits()
    first = finetune(stopped, train, config, teacher=stopped_teacher, progress=ctrl_c_halfway, checkpoint=checkpoint)
    assert first["interrupted"] and first["steps"] == 40 and checkpoint.is_file()
    resumed, resumed_teacher = _pruned_digits()
    second = finetune(resumed, train, config, teacher=resumed_teacher, checkpoint=checkpoint, resume=True)
    assert second["resumed_from_step"] == 40 and second["steps"] == 80 and not checkpoint.exists()
    assert _trained_weights(resumed) == _trained_weights(graph)
    assert _trained_weights(stopped) != _trained_weights(graph), "the interrupted run kept its own best model"


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    import os
    import signal

    checkpoint = tmp_path / "finetune.ckpt"
    graph, teacher = _pruned_digits()
    finetune(
        graph,
        load_dataset("digits", "train"),
        FinetuneConfig(parse_budget("40steps")),
        teacher=teacher,
        progress=lambda done, total, label: os.kill(os.getpid(), signal.SIGINT) if done < 100 else None,
        checkpoint=checkpoint,
    )
    graph, teacher = _pruned_digits()
    with pytest.raises(InputError, match="different fine-tune"):
        finetune(
            graph,
            load_dataset("digits", "train"),
            FinetuneConfig(parse_budget("50steps")),
            teacher=teacher,
            checkpoint=checkpoint,
            resume=True,
        )
    with pytest.raises(InputError, match="no fine-tune checkpoint"):
        finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("50steps")), checkpoint=tmp_path / "none", resume=True)


def _layer_weights(graph) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [graph.const(n.inputs[1]).tobytes() for n in graph.nodes if n.op in ("conv2d", "linear")]


@pytest.mark.parametrize(("strategy", "trained"), [("head", 1), ("last:2", 2)])
def test_partial_strategies_train_only_their_layers(strategy: str, trained: int) -> None:
    from edgetune.finetune import parse_strategy

    graph, teacher = _pruned_digits()
    before = _layer_weights(graph)
    report = finetune(
        graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("100steps"), strategy=parse_strategy(strategy)), teacher=teacher
    )
    changed = [a != b for a, b in zip(before, _layer_weights(graph))]
    assert changed == [False] * (len(before) - trained) + [True] * trained
    assert report["config"]["strategy"] == strategy


def test_gradual_unfreezing_opens_layers_from_the_output() -> None:
    from edgetune.finetune import Strategy

    gradual = Strategy("gradual")
    assert [gradual.trainable_layers(4, spent) for spent in (0.0, 0.3, 0.6, 0.9, 1.0)] == [1, 2, 3, 4, 4]
    assert gradual.trainable_layers(4, 0.9, frozen_inputs=1) == 3
    graph, teacher = _pruned_digits()
    before = _layer_weights(graph)
    report = finetune(
        graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("200steps"), strategy=gradual, eval_every=1000), teacher=teacher
    )
    assert all(a != b for a, b in zip(before, _layer_weights(graph))), "every layer trained in the end"
    assert report["metric_best"] > report["metric_before"] + 0.3


def test_memory_planner_shrinks_the_batch_then_checkpoints_then_freezes_layers() -> None:
    from edgetune.finetune.memory import estimate, plan

    graph = capture(zoo.mobilenet_v2(), (3, 96, 96))  # activations dominate its training memory

    def chosen(budget: int) -> tuple[int, int, bool]:
        made = plan(graph, budget, 32, qat=False, teacher=True)
        assert made.estimate <= budget
        return made.batch_size, made.frozen_inputs, made.checkpointing

    assert chosen(2**40) == (32, 0, False)
    assert chosen(estimate(graph, 16, 0, False, True)) == (16, 0, False)
    assert chosen(estimate(graph, 8, 0, False, True, checkpointing=True)) == (8, 0, True)
    assert chosen(estimate(graph, 8, 3, False, True, checkpointing=True)) == (8, 3, True)
    assert estimate(graph, 8, 0, True, True) > estimate(graph, 8, 0, False, True), "QAT needs more"


def test_memory_budget_freezes_input_layers_and_reports_the_peak() -> None:
    from edgetune.finetune.memory import estimate

    graph, teacher = _pruned_digits()
    budget = estimate(graph, 8, 1, False, True, checkpointing=True)
    before = _layer_weights(graph)
    report = finetune(graph, load_dataset("digits", "train"), FinetuneConfig(parse_budget("50steps"), memory=budget), teacher=teacher)
    assert report["batch_size"] == 8 and report["memory"]["plan"]["frozen_input_layers"] == 1
    assert _layer_weights(graph)[0] == before[0] and _layer_weights(graph)[1] != before[1]
    assert report["memory"]["peak_rss_delta_bytes"] >= 0 and report["memory"]["budget_bytes"] == budget


def test_regression_targets_train_with_mse() -> None:
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    graph, teacher = _pruned_digits()
    train = load_dataset("digits", "train")
    targets = run_batches(GraphRunner(teacher), train.x).reshape(len(train), -1).astype(np.float32)
    report = finetune(graph, Dataset(train.x, targets, "digits teacher outputs"), FinetuneConfig(parse_budget("150steps")))
    assert report["task"] == "regression" and report["validation"]["metric"] == "mse"
    assert report["metric_best"] < 0.5 * report["metric_before"]


def test_augmentations_keep_shapes_and_repeat_with_a_seed(tmp_path: Path) -> None:
    import torch

    from edgetune.finetune import parse_augment

    images = torch.from_numpy(load_dataset("digits", "train").x[:16])
    signals = torch.randn(4, 10, 49)
    chain = parse_augment("shift:2,flip,noise:0.1,cutout:0.25")
    first, second = (chain(images, torch.Generator().manual_seed(3)) for _ in range(2))
    assert first.shape == images.shape and torch.equal(first, second) and not torch.equal(first, images)
    assert parse_augment("time_shift:0.2,noise")(signals, torch.Generator().manual_seed(0)).shape == signals.shape
    user = tmp_path / "aug.py"
    user.write_text("def invert(batch, generator):\n    return -batch\n")
    assert torch.equal(parse_augment(f"{user}:invert")(images, torch.Generator()), -images)
    assert parse_augment("flip:1.0")(images, torch.Generator()).flip(-1).equal(images)
    with pytest.raises(InputError, match="augmentation 'spin' is unknown"):
        parse_augment("spin")


def test_finetune_command_recovers_a_compressed_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--prune", "channel:0.5"]
    assert run([*base, "-o", str(tmp_path / "c"), "--quiet", "--json"]) == 0
    compressed = json.loads(capsys.readouterr().out)
    argv = ["finetune", str(tmp_path / "c" / "model.edgetune"), "--train", "digits:train", "--teacher", "edgetune.zoo:digits_cnn"]
    argv += ["--finetune", "300steps", "--eval", "digits:test", "-o", str(tmp_path / "f"), "--quiet", "--json"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["command"] == "finetune" and report["finetune"]["config"]["qat"]
    assert report["evaluation"]["int8_accuracy"] > compressed["evaluation"]["int8_accuracy"] + 0.3
    assert report["evaluation"]["tflite"]["accuracy"] > 0.8
    assert {p.name for p in (tmp_path / "f").iterdir()} == {
        "model.onnx",
        "model.fp32.onnx",
        "model.tflite",
        "model.edgetune",
        "report.json",
        "recipe.toml",
    }


def test_compress_with_qat_reports_accuracy_before_and_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "-o", str(tmp_path), "--quiet", "--json"]
    argv += ["--prune", "channel:0.5", "--finetune", "300steps", "--train", "digits:train", "--qat"]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    recovery = report["recovery"]
    assert recovery["accuracy_before_compression"] > 0.95
    assert recovery["accuracy_after_compression"] < 0.5 < 0.8 < recovery["accuracy_after_recovery"]
    assert recovery["accuracy_after_recovery"] == report["evaluation"]["int8_accuracy"]
    assert "finetune (QAT)" in report["timings_s"] and not (tmp_path / "finetune.ckpt").exists()


def test_two_processes_under_torchrun_match_one_process_with_their_combined_batch(tmp_path: Path) -> None:
    """DistributedDataParallel on gloo: 2 processes x batch 16 average their gradients like 1 x batch 32."""
    import subprocess
    import sys

    common = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test", "--prune", "channel:0.5"]
    common += ["--finetune", "150steps", "--train", "digits:train", "--formats", "onnx", "--json", "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "edgetune.cli.main"]
    both = subprocess.run(
        [*launcher, *common, "--batch-size", "16", "-o", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=300
    )
    assert both.returncode == 0, both.stderr[-2000:]
    distributed = json.loads(both.stdout)  # one document: only the first process prints
    assert "Traceback" not in both.stderr
    alone = subprocess.run(
        [sys.executable, "-m", "edgetune.cli.main", *common, "--batch-size", "32", "-o", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    single = json.loads(alone.stdout)
    assert distributed["finetune"]["world_size"] == 2 and single["finetune"]["world_size"] == 1
    assert distributed["finetune"]["metric_best"] > distributed["finetune"]["metric_before"] + 0.3
    assert abs(distributed["finetune"]["metric_best"] - single["finetune"]["metric_best"]) <= 0.03
    assert (tmp_path / "ddp" / "model.onnx").is_file()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    import torch

    from edgetune.finetune.train import FloatRunner

    graph, _ = _pruned_digits()
    runner = FloatRunner(graph)
    x = torch.from_numpy(load_dataset("digits", "train").x[:16])
    grads = []
    for segments in (0, 3):
        runner.checkpoint_segments = segments
        for p in runner.trainable.values():
            p.grad = None
        runner(x).square().sum().backward()
        grads.append(torch.cat([p.grad.ravel() for p in runner.trainable.values()]))
    assert torch.equal(grads[0], grads[1])


def test_ctrl_c_during_the_fine_tune_exports_the_best_model_so_far(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "edgetune.cli.main", "compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--eval", "digits:test"]
    argv += ["--prune", "channel:0.5", "--finetune", "10m", "--train", "digits:train", "--formats", "onnx", "-o", str(tmp_path), "--json"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # without a terminal, each stage announces itself on a line
        if line.startswith("fine-tune"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["finetune"]["outcome"] == "interrupted" and report["finetune"]["seconds"] < 120
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "finetune.ckpt").is_file(), "exported, and resumable"


def test_qat_with_a_step_budget_gives_byte_identical_artifacts(tmp_path: Path) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "channel:0.5", "--prune-steps", "2", "--quiet"]
    argv += ["--finetune", "60steps", "--train", "digits:train", "--qat", "--augment", "shift:1,mixup:0.2"]
    for name in ("a", "b"):
        assert run([*argv, "-o", str(tmp_path / name)]) == 0
    for artifact in ("model.onnx", "model.tflite", "model.edgetune"):
        assert (tmp_path / "a" / artifact).read_bytes() == (tmp_path / "b" / artifact).read_bytes(), artifact


def test_float_targets_from_an_npz_train_a_regression(tmp_path: Path) -> None:
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    graph, teacher = _pruned_digits()
    train = load_dataset("digits", "train")
    targets = run_batches(GraphRunner(teacher), train.x).reshape(len(train), -1).astype(np.float32)
    np.savez(tmp_path / "regression.npz", x=train.x, y=targets)
    data = load_dataset(str(tmp_path / "regression.npz"), "train")
    assert data.has_targets and data.y is not None and data.y.shape == targets.shape
    report = finetune(graph, data, FinetuneConfig(parse_budget("60steps")))
    assert report["task"] == "regression"


def test_discriminative_learning_rate_slows_each_layer_below_the_top() -> None:
    """ULMFiT's decay: with factor 0.1 the first of four layers learns at a thousandth of the
    head's rate (AdamW's steps are near lr in size), and the report names the groups."""
    from edgetune.finetune.strategy import layer_depths

    moved = {}
    for decay in (1.0, 0.1):
        graph, teacher = _pruned_digits()
        assert sorted(layer_depths(graph).values()) == list(range(len(_layer_weights(graph))))
        before = [graph.const(n.inputs[1]).copy() for n in graph.nodes if n.op in ("conv2d", "linear")]
        config = FinetuneConfig(parse_budget("30steps"), lr_decay=decay, eval_every=1000)
        report = finetune(graph, load_dataset("digits", "train"), config, teacher=teacher)
        after = [graph.const(n.inputs[1]) for n in graph.nodes if n.op in ("conv2d", "linear")]
        moved[decay] = [float(np.abs(a - b).max()) for a, b in zip(after, before)]
        rate = report["learning_rate"]
        assert rate["peak"] == 3e-3 and rate["layer_groups"] == len(before)
        assert rate["lowest_peak"] == pytest.approx(3e-3 * decay ** (len(before) - 1))
    assert moved[0.1][0] < moved[1.0][0] / 20 and moved[0.1][-1] == pytest.approx(moved[1.0][-1], rel=0.5)


def test_transformer_blocks_share_a_depth_and_wide_ones_get_the_transformer_learning_rate() -> None:
    from text_encoder import bert_classifier

    from edgetune.finetune.strategy import layer_depths
    from edgetune.finetune.train import TRANSFORMER_LR, default_lr
    from edgetune.zoo.bert import BertEncoder

    graph = capture(bert_classifier(), (16,), "int64", ("input_ids", "attention_mask", "token_type_ids"))
    depths = layer_depths(graph)
    linear = [n.name for n in graph.nodes if n.op == "linear"]
    per_block = [depths[name] for name in linear]
    assert default_lr(graph) == 3e-3 and default_lr(capture(zoo.digits_cnn(), (1, 8, 8))) == 3e-3, "32 wide: a small encoder"
    wide = capture(BertEncoder(dim=256, heads=4, pooling="cls"), (16,), "int64", ("input_ids", "attention_mask", "token_type_ids"))
    assert default_lr(wide) == TRANSFORMER_LR
    # two blocks of Q, K, V, output and two feed-forward layers, then whatever sits above the last LayerNorm
    assert per_block[:6] == [per_block[0]] * 6 and per_block[6:12] == [per_block[0] - 1] * 6 and min(per_block) == 0, per_block


def test_a_fine_tune_over_its_memory_budget_says_so() -> None:
    from edgetune.cli.compress import _memory_text

    plan = {"frozen_input_layers": 0}
    within = {"peak_rss_delta_bytes": 90 * 2**20, "budget_bytes": 100 * 2**20, "predicted_bytes": 95 * 2**20, "plan": plan}
    assert "OVER" not in _memory_text(within)
    assert _memory_text({**within, "peak_rss_delta_bytes": 120 * 2**20}).endswith("OVER its budget")
