"""What a search leaves: ``search.json`` (every trial, the front, the chosen trial), ``best/``
(the chosen trial's folder: both artifacts, ``recipe.toml`` and ``report.json``, ready for the
gate) and ``pareto.png`` (quality against latency, budget lines drawn) when matplotlib is
installed.

The front is the trials that no other trial beats on every objective among those meeting the
budgets (or, when none meets them, among all that finished). The chosen trial meets every budget
and is best on the first objective (ties: lower latency, then smaller); when none meets them, the
closest one (smallest worst overshoot) is given instead, and the command fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.artifacts import json_bytes, publish_folder, write_file
from edgetune.recipe import Recipe
from edgetune.search.config import OBJECTIVES, SearchConfig


def _key(config: SearchConfig, trial: dict[str, Any], name: str) -> float:
    """An objective's figure, signed so that smaller is better."""
    value = {"quality": trial["quality"], "latency": trial["latency_ms"], "size": trial["size_kb"]}[name]
    return -float(value) if OBJECTIVES[name] == "maximize" else float(value)


def pareto_front(config: SearchConfig, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys([*config.objectives, "quality", "latency"]))
    points = [(trial, [_key(config, trial, name) for name in names]) for trial in trials]

    def beaten(values: list[float]) -> bool:
        return any(all(o <= v for o, v in zip(other, values)) and other != values for _, other in points)

    front: dict[tuple[float, ...], dict[str, Any]] = {}
    for trial, values in sorted(points, key=lambda point: point[0]["number"]):
        if not beaten(values):
            front.setdefault(tuple(values), trial)  # a point reached again (the same keys) shows once, as its first trial
    return sorted(front.values(), key=lambda trial: _key(config, trial, "latency"))


def _worst_overshoot(trial: dict[str, Any]) -> float:
    checks = [check for check in trial["checks"] if not check["passed"]]
    overshoots = []
    for check in checks:
        value, limit = check.get("value"), check.get("limit")
        if isinstance(value, (int, float)) and isinstance(limit, (int, float)) and not isinstance(value, bool):
            over = value - limit if check["name"].startswith("max_") else limit - value
            overshoots.append(over / max(abs(limit), 1e-9))
        else:
            overshoots.append(float("inf"))
    return max(overshoots, default=0.0)


def summarize(config: SearchConfig, recipe: Recipe, trials: list[dict[str, Any]], stopped: str | None) -> dict[str, Any]:
    trials = sorted(trials, key=lambda trial: trial["number"])
    measured = [trial for trial in trials if trial["failure"] is None]
    feasible = [trial for trial in measured if trial["feasible"]]
    front = pareto_front(config, feasible or measured)
    order = [*config.objectives, "latency", "size"]
    best = min(feasible, key=lambda t: [_key(config, t, name) for name in order]) if feasible else None
    closest = None if best or not measured else min(measured, key=_worst_overshoot)
    return {
        "schema": "edgetune.search",
        "version": 1,
        "study": config.study,
        "target": config.budget.name,
        "budgets": config.budget.budgets,
        "objectives": {name: OBJECTIVES[name] for name in config.objectives},
        "metric": config.metric,
        "artifact": config.artifact,
        "space": [dimension.to_dict() for dimension in config.space],
        "stopped": stopped,
        "trials": trials,
        "pruner": config.pruner,
        "counts": {
            "trials": len(trials),
            "failed": sum(1 for trial in trials if trial["failure"] is not None and not trial.get("stopped_early")),
            "stopped_early": sum(1 for trial in trials if trial.get("stopped_early")),
            "feasible": len(feasible),
        },
        "front": [trial["number"] for trial in front],
        "best": best,
        "closest": closest,
        "met": best is not None,
        "recipe": recipe.to_toml(),
    }


def _plot(out: Path, summary: dict[str, Any]) -> Path | None:
    from edgetune.errors import InputError
    from edgetune.plotting import pyplot

    measured = [t for t in summary["trials"] if t["failure"] is None and t["quality"] is not None and t["latency_ms"] is not None]
    if not measured:
        return None
    try:
        plt = pyplot("pareto.png")
    except InputError:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    front = set(summary["front"])
    for group, colour, label in ((False, "#bbbbbb", "trials"), (True, "#1f77b4", "front")):
        points = [t for t in measured if (t["number"] in front) == group]
        axes.scatter([t["latency_ms"] for t in points], [t["quality"] for t in points], s=18, c=colour, label=label)
    chosen = summary["best"] or summary["closest"]
    if chosen is not None and chosen.get("latency_ms") is not None:
        axes.scatter([chosen["latency_ms"]], [chosen["quality"]], s=90, facecolors="none", edgecolors="#d62728", label="chosen")
    for name, value in summary["budgets"].items():
        if name == "max_latency_p50_ms":
            axes.axvline(value, color="#d62728", linestyle="--", linewidth=1, label=name)
        elif name == "min_accuracy" and summary["metric"] == "accuracy":
            axes.axhline(value, color="#2ca02c", linestyle="--", linewidth=1, label=name)
    axes.set_xlabel(f"{summary['artifact']} p50 latency on {summary['target']} (ms)")
    axes.set_ylabel(summary["metric"])
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = out / "pareto.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_results(out: Path, summary: dict[str, Any]) -> None:
    """``search.json``, ``best/`` (the chosen, or closest, trial's folder) and ``pareto.png``."""
    chosen = summary["best"] or summary["closest"]
    if chosen is not None and Path(chosen["folder"]).is_dir():
        folder = Path(chosen["folder"])
        files = {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}
        publish_folder(out / "best", files)
        summary["best_folder"] = str(out / "best")
    plot = _plot(out, summary)
    if plot is not None:
        summary["plot"] = str(plot)
    write_file(out / "search.json", json_bytes(summary))
