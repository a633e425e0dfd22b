"""Search: how fast each way of searching reaches a model that meets a budget, and how a study
scales over workers.

Part 1 (always): the digits CNN (bundled, trained) with a 300-step distilled fine-tune after
pruning, for the stm32h7 target. That target has no board attached, so its latency is
edgetune's estimate, which follows the multiply-accumulates: deterministic, so the samplers are
compared without timer noise. (On this host the 8x8 model runs in microseconds and its latency
is per-op overhead: no recipe in the space reaches 60% of it.) Budgets: 60% of the unpruned
int8 model's estimated p50, then 80% (``--latency-share``), and accuracy within 1.0 pp of the
fp32 model's. The space gives each of the two prunable groups its own ratio (0 to 0.7) and varies
the fine-tune's learning rate. TPE, random search and a grid (5 values per range, seeded order)
run with seeds 0, 1 and 2 and ``--trials`` trials each, interleaved; ``compress --until`` runs
once with each screening (it is deterministic here). For each: the trials (or compressions) and seconds until the
first model met both budgets, and the best accuracy among those that did.

Part 2 (``--workers 1,2,4``): a PostgreSQL server on loopback (Debian's postgresql), one study
of ``--worker-trials`` trials of the digits recipe (no fine-tune) per worker count, each worker
an ``edgetune search --worker`` process; trials per minute, and per core (this machine has 2).

Part 2b (``--pruners``): TPE on the 80% budget with and without the median pruner (stopping
trials whose fine-tune trails the trials that met the budgets): wall time, trials stopped early,
and the best accuracy.

Part 3 (``--efficientnet``): EfficientNet-Lite0 (random weights) at 224x224 on crops of
scikit-learn's sample photos, raspberry-pi-4 estimated latency, NSGA-II on quality (SQNR of the
TFLite artifact against the unpruned fp32 model) and latency within ``--time``: the front, how
many of its points meet the budget (80% of the unpruned latency), each exported in both formats.

    python bench/search.py [--trials 24] [--seeds 0,1,2] [--pruners] [--workers 1,2,4] [--efficientnet --time 30m]

Prints tables and writes bench/results/search.json (part 1), search-pruners.json,
search-workers.json and search-efficientnet.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import log, table, write_json  # noqa: E402

from edgetune import search  # noqa: E402
from edgetune.recipe import Recipe  # noqa: E402
from edgetune.recipe import run as compress  # noqa: E402

TARGET = "stm32h7"
BASE = {
    "target": TARGET,
    "model.source": "edgetune.zoo:digits_cnn",
    "data.calib": "digits",
    "data.eval": "digits:test",
    "data.train": "digits:train",
    "quantize.method": "minmax",
    "quantize.ptq": "none",
    "finetune.budget": "300steps",
    "finetune.seed": 0,
    "export.formats": ["tflite"],
}
SPACE = {
    "prune.layers.stem.0": [0.0, 0.7],
    "prune.layers.expand.0": [0.0, 0.7],
    "finetune.lr": {"low": 1e-3, "high": 1e-2, "log": True},
}


def _estimate(path: Path, target: str) -> float:
    from edgetune.profile import BenchRequest, bench

    return float(bench(BenchRequest(path, target))[0]["estimate"]["p50_ms"])


def _reference(folder: Path) -> tuple[float, float]:
    """The unpruned int8 model's estimated p50 (ms) and the fp32 model's accuracy."""
    recipe = Recipe().updated({**BASE, "finetune.budget": None}, "bench")
    result = compress(recipe, folder / "reference")
    return _estimate(folder / "reference" / "model.tflite", TARGET), float(result.report["evaluation"]["fp32_accuracy"])


def _sampler_run(sampler: str, seed: int, trials: int, budgets: dict[str, float], folder: Path, pruner: str = "none") -> dict[str, Any]:
    start = time.monotonic()
    met_at: list[float] = []

    def progress(done: int, total: int, label: str) -> None:
        if "meets" in label and not met_at:
            met_at.append(time.monotonic() - start)

    summary = search.run(
        Recipe().updated(BASE, "bench"),
        folder / f"{sampler}-{pruner}-{seed}",
        progress=progress,
        trials=trials,
        seed=seed,
        sampler=sampler,
        budgets=budgets,
        space=SPACE,
        pruner=pruner,
    )
    feasible = [t for t in summary["trials"] if t["feasible"]]
    first = min((t["number"] for t in feasible), default=None)
    fast = [t for t in summary["trials"] if any(c["name"] == "max_latency_p50_ms" and c["passed"] for c in t["checks"])]
    return {
        "method": sampler,
        "pruner": pruner,
        "stopped_early": summary["counts"]["stopped_early"],
        "best_under_latency": max((t["quality"] for t in fast if t["quality"] is not None), default=None),
        "seed": seed,
        "runs": len(summary["trials"]),
        "feasible": len(feasible),
        "first_feasible": None if first is None else first + 1,
        "seconds_to_first": met_at[0] if met_at else None,
        "best_accuracy": max((t["quality"] for t in feasible), default=None),
        "seconds": time.monotonic() - start,
    }


def _until_run(budgets: dict[str, float], folder: Path, screen: str) -> dict[str, Any]:
    start = time.monotonic()
    summary = search.until(Recipe().updated(BASE, "bench"), folder / f"until-{screen}", budgets, screen=screen)
    return {
        "method": f"until ({screen})",
        "best_under_latency": summary["chosen"]["quality"] if summary["resources_met"] else None,
        "seed": "-",
        "runs": summary["compressions"],
        "feasible": int(summary["met"]),
        "first_feasible": summary["compressions"] if summary["met"] else None,
        "seconds_to_first": time.monotonic() - start if summary["met"] else None,
        "best_accuracy": summary["chosen"]["quality"] if summary["met"] else None,
        "seconds": time.monotonic() - start,
        "stopped": summary["stopped"],
        "steps": len(summary["steps"]) - 1,
        "chosen_accuracy": summary["chosen"]["quality"],
        "chosen_ms": summary["chosen"]["latency_ms"],
    }


def samplers(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    latency, accuracy = _reference(folder)
    document: dict[str, Any] = {"reference_ms": latency, "fp32_accuracy": accuracy, "shares": {}}
    for share in (float(s) for s in args.latency_share.split(",")):
        budgets = {"max_latency_p50_ms": round(share * latency, 6), "min_accuracy": round(accuracy - 0.01, 4)}
        log(f"search: unpruned int8 {latency:.4f} ms estimated on {TARGET}, fp32 accuracy {accuracy:.4f}; budgets {budgets}")
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            for sampler in ("tpe", "random", "grid"):  # interleaved: a slower machine later slows all of them
                log(f"search: {sampler} seed {seed}")
                runs.append(_sampler_run(sampler, seed, args.trials, budgets, folder / f"{share}"))
        for screen in ("quick", "recover"):
            log(f"search: compress --until --until-screen {screen}")
            runs.append(_until_run(budgets, folder / f"{share}", screen))
        _print_runs(share, runs)
        document["shares"][str(share)] = {"budgets": budgets, "runs": runs, "median_first": _medians(runs, args.trials)}
    return document


def _print_runs(share: float, runs: list[dict[str, Any]]) -> None:
    def number(value: float | None, digits: str) -> str:
        return format(value, digits) if value is not None else "-"

    rows = [
        [f"{share:g}", r["method"], r["seed"], r["runs"], r["feasible"], r["first_feasible"] or "-", number(r["seconds_to_first"], ".0f")]
        + [number(r["best_accuracy"], ".4f"), number(r["best_under_latency"], ".4f"), f"{r['seconds']:.0f}"]
        for r in runs
    ]
    header = ["share", "method", "seed", "trials", "meet both", "first meeting (trial)", "s to first", "best accuracy"]
    print(table(rows, [*header, "best accuracy under the latency budget", "s"]))


def _medians(runs: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    medians = {}
    for method in ("tpe", "random", "grid"):
        chosen = [r for r in runs if r["method"] == method]
        firsts = [r["first_feasible"] or trials + 1 for r in chosen]
        seconds = [r["seconds_to_first"] or r["seconds"] for r in chosen]
        medians[method] = {"trials": statistics.median(firsts), "seconds": statistics.median(seconds)}
        print(
            f"{method}: median trials to the first recipe meeting the budgets {medians[method]['trials']}"
            f" ({medians[method]['seconds']:.0f} s; none: counted as {trials + 1} trials and the whole run)"
        )
    return medians


def pruners(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """TPE with and without the median pruner, seeds interleaved, on the 80% latency budget."""
    latency, accuracy = _reference(folder)
    budgets = {"max_latency_p50_ms": round(0.8 * latency, 6), "min_accuracy": round(accuracy - 0.01, 4)}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for pruner in ("none", "median"):
            log(f"search: tpe, pruner {pruner}, seed {seed}")
            runs.append(_sampler_run("tpe", seed, args.trials, budgets, folder / "pruners", pruner))
    rows = [
        [r["pruner"], r["seed"], r["runs"], r["stopped_early"], r["feasible"], f"{r['best_accuracy']:.4f}" if r["best_accuracy"] else "-"]
        + [f"{r['seconds']:.0f}"]
        for r in runs
    ]
    print(table(rows, ["pruner", "seed", "trials", "stopped early", "meet both", "best accuracy", "s"]))
    for pruner in ("none", "median"):
        chosen = [r for r in runs if r["pruner"] == pruner]
        print(f"pruner {pruner}: {sum(r['seconds'] for r in chosen):.0f} s in all, best accuracies {[r['best_accuracy'] for r in chosen]}")
    return {"budgets": budgets, "runs": runs}


def _worker_recipe(trials: int) -> str:
    """The search tests' digits recipe over the pruning ratio alone, with ``trials`` trials."""
    from test_search import RECIPE

    return RECIPE.replace("trials = 4\nseed = 3", f"trials = {trials}\nheartbeat = 2").replace(
        '"quantize.method" = ["minmax", "mse"]\n', ""
    )


def _study(url: str, name: str, workers: int, trials: int, folder: Path) -> dict[str, Any]:
    recipe = folder / f"{name}.toml"
    recipe.write_text(_worker_recipe(trials))
    start = time.monotonic()
    argv = [sys.executable, "-m", "edgetune", "search", str(recipe), "--storage", url, "--study", name, "--worker", "--quiet", "--json"]
    processes = [
        subprocess.Popen([*argv, "-o", str(folder / f"{name}-{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(workers)
    ]
    outputs = [process.communicate(timeout=1800) for process in processes]
    seconds = time.monotonic() - start
    if any(process.returncode not in (0, 1) for process in processes):
        raise RuntimeError(next(err.decode()[-800:] for (_, err), p in zip(outputs, processes) if p.returncode not in (0, 1)))
    summary = json.loads(outputs[-1][0])
    numbers = [trial["number"] for trial in summary["trials"]]
    cores = min(workers, 2)
    return {
        "workers": workers,
        "trials": len(numbers),
        "distinct": len(set(numbers)),
        "seconds": seconds,
        "trials_per_minute": 60 * len(numbers) / seconds,
        "per_core": 60 * len(numbers) / seconds / cores,
    }


def workers(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from postgres_server import Unavailable, running_postgres

    try:
        with running_postgres() as url:
            rows = []
            for count in (int(c) for c in args.workers.split(",")):
                log(f"search: {count} worker(s) on PostgreSQL, {args.worker_trials} trials")
                rows.append(_study(url, f"w{count}", count, args.worker_trials, folder))
    except Unavailable as exc:
        log(f"search: workers skipped: {exc}")
        return {"skipped": str(exc)}
    print(
        table(
            [
                [r["workers"], r["trials"], r["distinct"], f"{r['seconds']:.1f}", f"{r['trials_per_minute']:.1f}", f"{r['per_core']:.1f}"]
                for r in rows
            ],
            ["workers", "trials", "distinct", "s", "trials/min", "trials/min per core used"],
        )
    )
    return {"runs": rows}


def efficientnet(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    base = {
        "target": "raspberry-pi-4",
        "model.source": "edgetune.zoo:efficientnet_lite0",
        "data.calib": "sample-images",
        "quantize.samples": 128,
        "quantize.ptq": "bias-correct",
    }
    recipe = Recipe().updated(base, "bench")
    compress(recipe, folder / "lite0-reference")
    latency = _estimate(folder / "lite0-reference" / "model.tflite", "raspberry-pi-4")
    budgets = {"max_latency_p50_ms": round(0.8 * latency, 4)}
    log(f"search: EfficientNet-Lite0 unpruned {latency:.2f} ms estimated on raspberry-pi-4; budget {budgets}; {args.time}")
    start = time.monotonic()
    summary = search.run(
        recipe,
        folder / "lite0",
        time=args.time,
        trials=args.lite_trials,
        objectives=["quality", "latency"],
        metric="sqnr",
        budgets=budgets,
        space={"prune.ratio": [0.0, 0.6], "prune.criterion": ["l2", "l1"], "quantize.method": ["mse", "percentile", "minmax"]},
        progress=lambda done, total, label: log(f"search {done}: {label}"),
    )
    by_number = {t["number"]: t for t in summary["trials"]}
    front = [by_number[n] for n in summary["front"]]
    exported = [t for t in front if t["feasible"] and all((Path(t["folder"]) / f).is_file() for f in ("model.onnx", "model.tflite"))]
    print(
        table(
            [
                [t["number"], f"{t['quality']:.2f}", f"{t['latency_ms']:.2f}", f"{t['size_kb']:.0f}", "yes" if t["feasible"] else "no"]
                for t in front
            ],
            ["trial", "SQNR vs original (dB)", "ms (estimated)", "KB", "meets"],
        )
    )
    print(
        f"EfficientNet-Lite0: {len(summary['trials'])} trials in {time.monotonic() - start:.0f} s; front {len(front)}, exported and meeting the budget {len(exported)}"
    )
    return {"reference_ms": latency, "budgets": budgets, "trials": len(summary["trials"]), "front": front, "front_meeting": len(exported)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--latency-share", default="0.6,0.8", help="the budgets: these shares of the unpruned latency")
    parser.add_argument("--workers", default="", help="worker counts for the PostgreSQL part, e.g. 1,2,4")
    parser.add_argument("--worker-trials", type=int, default=16)
    parser.add_argument("--efficientnet", action="store_true")
    parser.add_argument("--pruners", action="store_true", help="TPE with and without stopping hopeless trials")
    parser.add_argument("--time", default="30m", help="the EfficientNet search's time budget")
    parser.add_argument("--lite-trials", type=int, default=60)
    parser.add_argument("--skip-samplers", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:  # each part writes its own file
        folder = Path(name)
        parts = [("search", samplers, not args.skip_samplers), ("search-pruners", pruners, args.pruners)]
        parts += [("search-workers", workers, bool(args.workers))]
        for file, part, wanted in [*parts, ("search-efficientnet", efficientnet, args.efficientnet)]:
            if wanted:
                log(f"wrote {write_json(file, part(args, folder))}")


if __name__ == "__main__":
    main()
