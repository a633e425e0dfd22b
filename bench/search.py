"""Search: TPE against random search, the same trial count, on a latency budget.

The digits CNN (bundled, trained) with a 100-step distilled fine-tune after pruning. The target
is raspberry-pi-4 with no board attached, so its latency is edgetune's estimate: deterministic,
which makes the samplers comparable without timer noise (a host measurement of an 8x8 model is
microseconds of noise). The budget is 60% of the unpruned int8 model's estimated p50 latency,
and accuracy within 1.0 pp of the fp32 model's (``--latency-share`` sets another share). Each sampler runs with seeds 0, 1 and 2 and
``--trials`` trials; for each run the bench reports the trials and the wall time until the
first trial met both budgets, and the best accuracy among those that did.

    python bench/search.py [--trials 12] [--seeds 0,1,2]

Prints a table and writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

from edgetune import search  # noqa: E402
from edgetune.recipe import Recipe  # noqa: E402
from edgetune.recipe import run as compress  # noqa: E402

BASE = {
    "target": "raspberry-pi-4",
    "model.source": "edgetune.zoo:digits_cnn",
    "data.calib": "digits",
    "data.eval": "digits:test",
    "data.train": "digits:train",
    "quantize.method": "minmax",
    "quantize.ptq": "none",
    "finetune.budget": "100steps",
    "finetune.seed": 0,
    "export.formats": ["tflite"],
}
SPACE = {"prune.ratio": [0.0, 0.7], "prune.criterion": ["l2", "l1"], "finetune.lr": {"low": 1e-3, "high": 1e-2, "log": True}}


def _reference(folder: Path) -> tuple[float, float]:
    """The unpruned int8 model's estimated p50 (ms) and the fp32 model's accuracy."""
    from edgetune.profile import BenchRequest, bench

    recipe = Recipe().updated({**BASE, "finetune.budget": None}, "bench")
    result = compress(recipe, folder / "reference")
    estimate = bench(BenchRequest(folder / "reference" / "model.tflite", "raspberry-pi-4"))[0]["estimate"]["p50_ms"]
    return float(estimate), float(result.report["evaluation"]["fp32_accuracy"])


def _one(sampler: str, seed: int, trials: int, budgets: dict[str, float], folder: Path) -> dict[str, Any]:
    start = time.monotonic()
    met_at: list[float] = []

    def progress(done: int, total: int, label: str) -> None:
        if "meets" in label and not met_at:
            met_at.append(time.monotonic() - start)

    summary = search.run(
        Recipe().updated(BASE, "bench"),
        folder / f"{sampler}-{seed}",
        progress=progress,
        trials=trials,
        seed=seed,
        sampler=sampler,
        budgets=budgets,
        space=SPACE,
    )
    feasible = [t for t in summary["trials"] if t["feasible"]]
    measured = [t for t in summary["trials"] if t["latency_ms"] is not None]
    first = min((t["number"] for t in feasible), default=None)
    return {
        "sampler": sampler,
        "seed": seed,
        "trials": len(summary["trials"]),
        "feasible": len(feasible),
        "first_feasible_trial": None if first is None else first + 1,
        "seconds_to_first": met_at[0] if met_at else None,
        "best_accuracy": max((t["quality"] for t in feasible), default=None),
        "seconds": time.monotonic() - start,
        "fastest_ms": min((t["latency_ms"] for t in measured), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--latency-share", type=float, default=0.6, help="the budget: this share of the unpruned latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        latency, accuracy = _reference(folder)
        budgets = {"max_latency_p50_ms": round(args.latency_share * latency, 6), "min_accuracy": round(accuracy - 0.01, 4)}
        log(f"search: unpruned int8 {latency:.4f} ms estimated, fp32 accuracy {accuracy:.4f}; budgets {budgets}")
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            for sampler in ("tpe", "random"):  # interleaved: a slower machine later slows both
                log(f"search: {sampler} seed {seed}")
                runs.append(_one(sampler, seed, args.trials, budgets, folder))
    rows = [
        [r["sampler"], r["seed"], r["trials"], r["feasible"], r["first_feasible_trial"] or "-"]
        + [f"{r['seconds_to_first']:.0f}" if r["seconds_to_first"] else "-", f"{r['best_accuracy']:.4f}" if r["best_accuracy"] else "-"]
        + [f"{r['fastest_ms'] / latency:.2f}" if r["fastest_ms"] else "-"]
        for r in runs
    ]
    print(
        table(
            rows,
            ["sampler", "seed", "trials", "meet budgets", "first meeting (trial)", "s to first", "best accuracy", "fastest / unpruned"],
        )
    )
    medians = {}
    for sampler in ("tpe", "random"):
        firsts = [r["first_feasible_trial"] or args.trials + 1 for r in runs if r["sampler"] == sampler]
        medians[sampler] = statistics.median(firsts)
        print(f"{sampler}: median trials to the first recipe meeting the budgets {medians[sampler]} (none: counted as {args.trials + 1})")
    path = write_json(
        "search", {"budgets": budgets, "reference_ms": latency, "fp32_accuracy": accuracy, "runs": runs, "median_first": medians}
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
