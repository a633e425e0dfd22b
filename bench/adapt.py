"""Adaptation under a memory budget, and few-shot learning, on scikit-learn's digits.

Part 1, fine-tune strategies on a recovery task: the digits CNN pruned to 50% of its channels
and quantized to int8, recovered with each strategy (full, head, bias, LoRA ranks, sparse
updates at several budgets) for the same step budget. Each strategy's learning rate is
picked on the fine-tune's validation split (never the test split) from a small grid. The
table gives test accuracy of both int8 artifacts against the training state measured tensor
by tensor (and predicted), as a share of full fine-tuning's; a plot draws the same.

Part 2, few-shot: an untrained digits CNN meta-trained on classes 0-5 (4-way, 5-shot
episodes) with MAML, first-order MAML and Reptile, each for the same time budget; against a
model pretrained on the same six classes for the same time (plain supervised training) and
against the untrained model. Each adapts to the held-out classes 6-9 (4-way) from K = 1 and
5 examples per class for 1, 5 and 10 SGD steps; query accuracy over test-split episodes. Each
initialization's adaptation learning rate and strategy (all weights, or the head) are picked
on validation episodes from the train split, at 10 steps.

    python bench/adapt.py [--steps 300] [--meta-budget 3m] [--episodes 50]

Prints three tables, writes bench/results/adapt.json and bench/results/adapt_memory.png.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, log, table, write_json  # noqa: E402

from edgetune.capture import capture  # noqa: E402
from edgetune.data import Dataset, load_dataset  # noqa: E402
from edgetune.finetune import FinetuneConfig, finetune, parse_budget, parse_strategy  # noqa: E402
from edgetune.ir.graph import Graph  # noqa: E402
from edgetune.meta.adapt import AdaptConfig, adapt  # noqa: E402
from edgetune.meta.episodes import Episode, class_pool  # noqa: E402
from edgetune.meta.learn import MetaConfig, meta_train  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.prune import PruneConfig  # noqa: E402
from edgetune.zoo import _untrained  # noqa: E402
from edgetune.zoo.digits import DigitsCNN  # noqa: E402

STRATEGIES = [
    "full",
    "head",
    "bias",
    "head+bias",
    "bias+lite",
    "head+bias+lite",
    "lora:2",
    "lora:4",
    "lora:8",
    "head+lora:4",
    "sparse:20KB",
    "sparse:40KB",
    "sparse:60KB",
    "sparse:100KB",
    "sparse:150KB",
]
LEARNING_RATES = (0.003, 0.01, 0.03)
ADAPT_RATES = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
SEEN, HELD_OUT = (0, 1, 2, 3, 4, 5), (6, 7, 8, 9)


def recover(strategy: str, steps: int, lr: float) -> dict[str, Any]:
    config = FinetuneConfig(parse_budget(f"{steps}steps"), lr=lr, strategy=parse_strategy(strategy))
    with tempfile.TemporaryDirectory() as out:
        result = compress(
            "edgetune.zoo:digits_cnn",
            load_dataset("digits", "calibration"),
            out,
            eval_data=load_dataset("digits", "test"),
            prune=PruneConfig(0.5, channel_multiple=8),
            finetune=config,
            train_data=load_dataset("digits", "train"),
        )
    report = result.report
    tuned, state = report["finetune"], report["finetune"]["memory"]["training_state"]
    return {
        "strategy": strategy,
        "lr": lr,
        "validation": tuned["metric_best"],
        "int8_accuracy": report["evaluation"]["int8_accuracy"],
        "tflite_accuracy": report["evaluation"]["tflite"]["accuracy"],
        "after_compression": report["recovery"]["accuracy_after_compression"],
        "state_measured": state["measured_bytes"],
        "state_predicted": state["predicted_bytes"],
        "rss_delta": tuned["memory"]["peak_rss_delta_bytes"],
        "seconds": tuned["seconds"],
        "trained": tuned.get("updates", {}),
    }


def strategies(steps: int) -> list[dict[str, Any]]:
    rows = []
    for strategy in STRATEGIES:
        runs = []
        for lr in LEARNING_RATES:
            log(f"[strategy] {strategy}, lr {lr}, {steps} steps")
            runs.append(recover(strategy, steps, lr))
        rows.append(max(runs, key=lambda r: r["validation"]))
    return rows


def untrained() -> Graph:
    return capture(_untrained(DigitsCNN, (1, 8, 8)), (1, 8, 8))


def initializations(budget: str) -> dict[str, dict[str, Any]]:
    train = load_dataset("digits", "train")
    assert train.y is not None
    inits: dict[str, dict[str, Any]] = {"untrained": {"graph": untrained(), "seconds": 0.0}}
    seen = np.isin(train.y, SEEN)
    graph = untrained()
    log(f"[few-shot] pretraining on classes 0-5 for {budget}")
    report = finetune(graph, Dataset(train.x[seen], train.y[seen], "digits:train 0-5"), FinetuneConfig(parse_budget(budget), lr=0.01))
    inits["pretrained on 0-5"] = {"graph": graph, "seconds": report["seconds"], "steps": report["steps"]}
    for algo in ("maml", "fomaml", "reptile"):
        graph = untrained()
        log(f"[few-shot] {algo} on classes 0-5 for {budget}")
        config = MetaConfig(parse_budget(budget), algo=algo, way=4, shot=5, query=10, inner_steps=10, inner_lr=0.1, classes=SEEN)
        report = meta_train(graph, train, config)
        inits[algo] = {"graph": graph, "seconds": report["seconds"], "steps": report["steps"], "validation": report["validation"]["best"]}
    return inits


def query_accuracy(graph: Graph, episode: Episode, steps: int, lr: float, strategy: str) -> float:
    import torch

    from edgetune.meta.runner import MetaRunner

    adapted = copy.deepcopy(graph)
    adapt(adapted, Dataset(episode.support_x, episode.support_y, "support"), AdaptConfig(steps=steps, lr=lr, strategy=strategy))
    runner = MetaRunner(adapted)
    with torch.no_grad():
        out = runner.logits(runner.initial(), torch.from_numpy(episode.query_x))
    return float((out.argmax(1).numpy() == episode.query_y).mean())


def few_shot(inits: dict[str, dict[str, Any]], episodes: int) -> list[dict[str, Any]]:
    validation_pool = class_pool(load_dataset("digits", "train"), HELD_OUT, 4, 15)
    test_pool = class_pool(load_dataset("digits", "test"), HELD_OUT, 4, 15)
    rows = []
    for shot in (1, 5):
        rng = np.random.default_rng(shot)
        validation = [validation_pool.episode(4, shot, 10, rng) for _ in range(20)]
        test = [test_pool.episode(4, shot, 10, rng) for _ in range(episodes)]
        for name, init in inits.items():
            graph = init["graph"]
            log(f"[few-shot] {name}, K = {shot}: picking the adaptation learning rate")
            choices = [(lr, strategy) for lr in ADAPT_RATES for strategy in ("full", "head")]
            scores = [np.mean([query_accuracy(graph, e, 10, lr, strategy) for e in validation]) for lr, strategy in choices]
            lr, strategy = choices[int(np.argmax(scores))]
            accuracy = {steps: float(np.mean([query_accuracy(graph, e, steps, lr, strategy) for e in test])) for steps in (1, 5, 10)}
            rows.append({"init": name, "shot": shot, "lr": lr, "strategy": strategy, "accuracy": accuracy})
    return rows


def plot(rows: list[dict[str, Any]], full: int) -> Path | None:
    try:
        from edgetune.plotting import pyplot

        plt = pyplot("the memory plot")
    except Exception:  # noqa: BLE001 - matplotlib is optional
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        axes.scatter(r["state_measured"] / full, 100 * r["int8_accuracy"])
        axes.annotate(r["strategy"], (r["state_measured"] / full, 100 * r["int8_accuracy"]), fontsize=8)
    axes.set_xlabel("training state, share of full fine-tuning's (measured)")
    axes.set_ylabel("int8 test accuracy, %")
    axes.set_title("digits CNN, 50% pruned, int8: recovery by strategy")
    path = RESULTS / "adapt_memory.png"
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def strategy_table(rows: list[dict[str, Any]], steps: int) -> None:
    full = next(r for r in rows if r["strategy"] == "full")
    lines = [
        [
            r["strategy"],
            r["lr"],
            f"{100 * r['int8_accuracy']:.2f}",
            f"{100 * (r['int8_accuracy'] - full['int8_accuracy']):+.2f}",
            f"{100 * r['tflite_accuracy']:.2f}",
            f"{r['state_measured'] / 1e3:.0f}",
            f"{r['state_predicted'] / 1e3:.0f}",
            f"{r['state_measured'] / full['state_measured']:.2f}",
        ]
        for r in rows
    ]
    header = ["strategy", "lr", "int8 acc %", "vs full pp", "TFLite acc %", "state KB", "predicted KB", "x full"]
    print(table(lines, header))
    print(f"digits CNN, 50% of channels pruned, int8; {steps} steps; after compression {100 * full['after_compression']:.2f}%")


def few_shot_tables(inits: dict[str, dict[str, Any]], shots: list[dict[str, Any]], budget: str, episodes: int) -> None:
    lines = [[r["init"], r["shot"], f"{r['lr']:g} {r['strategy']}", *(f"{100 * r['accuracy'][s]:.1f}" for s in (1, 5, 10))] for r in shots]
    print(table(lines, ["initialization", "K", "adapt lr, what", "1 step %", "5 steps %", "10 steps %"]))
    print(f"4-way episodes on held-out classes 6-9 (digits test split, {episodes} per row); initializations trained {budget} on 0-5")
    meta = [
        [name, init.get("steps", 0), f"{init['seconds']:.0f}", f"{100 * init['validation']:.1f}" if "validation" in init else "-"]
        for name, init in inits.items()
    ]
    print(table(meta, ["initialization", "steps", "seconds", "validation % (classes 0-5)"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="fine-tune steps per strategy (default 300)")
    parser.add_argument("--meta-budget", default="3m", help="meta-training (and pretraining) time per initialization (default 3m)")
    parser.add_argument("--episodes", type=int, default=50, help="test episodes per setting (default 50)")
    parser.add_argument("--only", choices=["strategies", "few-shot"], help="run one part (its own JSON file)")
    args = parser.parse_args()
    started, document = time.perf_counter(), dict[str, Any]()
    if args.only != "few-shot":
        rows = strategies(args.steps)
        strategy_table(rows, args.steps)
        full = next(r for r in rows if r["strategy"] == "full")
        picture = plot(rows, full["state_measured"])
        document |= {"strategies": rows, "plot": str(picture) if picture else None}
    if args.only != "strategies":
        inits = initializations(args.meta_budget)
        shots = few_shot(inits, args.episodes)
        few_shot_tables(inits, shots, args.meta_budget, args.episodes)
        document |= {
            "few_shot": shots,
            "initializations": {name: {k: v for k, v in init.items() if k != "graph"} for name, init in inits.items()},
        }
    name = "adapt" if args.only is None else f"adapt_{args.only.replace('-', '_')}"
    print(f"wrote {write_json(name, {**document, 'seconds': time.perf_counter() - started})}")


if __name__ == "__main__":
    main()
