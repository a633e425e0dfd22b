"""A search's settings: the ``[search]`` table of a recipe file, overridden by the command line.

[search]
trials = 30                  # stop after this many trials ...
time = "20m"                 # ... or this much time, whichever comes first
objectives = ["quality", "latency"]   # one: TPE; several: NSGA-II and a Pareto front
metric = "accuracy"          # quality: accuracy (agreement without labels), sqnr or agreement
artifact = "model.tflite"    # whose latency, size and quality count
seed = 0
device = "ssh://pi@raspberrypi.local"  # measure on this board (target = the recipe's)

[search.budgets]             # the gate's budget names
max_latency_p50_ms = 0.5
min_accuracy = 0.95

[search.space]               # see space.py; a default space when absent
"prune.ratio" = [0.0, 0.7]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgetune.errors import InputError
from edgetune.gate.config import TargetBudgets, parse_target
from edgetune.recipe import Recipe
from edgetune.search.pruning import PRUNERS
from edgetune.search.space import Dimension, default_space, expand, grid_size, has_every, model_names, parse_space
from edgetune.targets import load_target

OBJECTIVES = {"quality": "maximize", "latency": "minimize", "size": "minimize"}
METRICS = ("accuracy", "sqnr", "agreement")
ARTIFACTS = ("model.tflite", "model.onnx")
SEARCH_KEYS = {"trials", "time", "objectives", "metric", "artifact", "seed", "device", "threads", "budgets", "space", "study", "heartbeat"}
SEARCH_KEYS |= {"sampler", "pruner"}
SAMPLERS = ("auto", "tpe", "nsga2", "random", "grid")  # auto: TPE for one objective, NSGA-II for several
# Budgets a trial can be checked against (parity needs a board run the search does not make)
SEARCH_BUDGETS = {
    "min_accuracy",
    "max_accuracy_drop_pp",
    "min_sqnr_db",
    "min_tflite_onnx_agreement",
    "all_ops_delegated",
    "max_latency_p50_ms",
    "max_latency_p90_ms",
    "max_peak_memory_mb",
    "max_artifact_kb",
    "max_arena_kb",
    "max_flash_kb",
}


@dataclass(frozen=True)
class SearchConfig:
    space: tuple[Dimension, ...]
    budget: TargetBudgets  # the recipe's target and the budgets every kept trial must meet
    objectives: tuple[str, ...] = ("quality",)
    metric: str = "accuracy"
    artifact: str = "model.tflite"
    trials: int | None = 30
    seconds: float | None = None
    seed: int = 0
    study: str = "edgetune"
    storage: str | None = None  # an Optuna storage URL; default: sqlite in the output folder
    resume: bool = False  # continue the folder's study, or join a shared storage's (--worker)
    sampler: str = "auto"
    heartbeat: float = 10.0  # seconds between a worker's heartbeats on a shared storage; 3 missed: its trial runs again
    pruner: str = "none"  # median or halving: hopeless trials stop early on the fine-tune's validation curve

    def directions(self) -> list[str]:
        return [OBJECTIVES[name] for name in self.objectives]


def parse_seconds(text: Any, where: str) -> float:
    """``90s``, ``20m``, ``2h`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        units = {"s": 1.0, "m": 60.0, "h": 3600.0}
        try:
            seconds = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
        except ValueError:
            raise InputError(f"{where}: time {text!r} is not a duration", "e.g. 90s, 20m or 2h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{where}: time must be above zero, not {text!r}", "e.g. 90s, 20m or 2h")
    return seconds


def search_budget(recipe: Recipe, table: Mapping[str, Any], where: str) -> TargetBudgets:
    budgets = dict(table.get("budgets", {}))
    unknown = sorted(set(budgets) - SEARCH_BUDGETS)
    if unknown:
        raise InputError(f"{where}: {', '.join(unknown)} cannot be checked in a search", f"use {', '.join(sorted(SEARCH_BUDGETS))}")
    raw = {**budgets, **{key: table[key] for key in ("device", "threads") if key in table}}
    load_target(str(recipe["target"]))  # an unknown target is one line before any trial, not a failed trial each
    budget = parse_target(str(recipe["target"]), raw, where)
    for name in ("min_accuracy", "min_tflite_onnx_agreement"):
        if budget.budgets.get(name, 0.0) > 1.0:
            raise InputError(f"{where}: {name} = {budget.budgets[name]} can never be met (the figure is 0..1)", "give a share, e.g. 0.95")
    for name in ("max_latency_p50_ms", "max_latency_p90_ms", "max_artifact_kb", "max_flash_kb", "max_arena_kb"):
        if budget.budgets.get(name) == 0:
            raise InputError(f"{where}: {name} = 0 can never be met", "give a limit above zero")
    p50, p90 = budget.budgets.get("max_latency_p50_ms"), budget.budgets.get("max_latency_p90_ms")
    if p50 is not None and p90 is not None and p90 < p50:
        raise InputError(
            f"{where}: max_latency_p90_ms ({p90}) is below max_latency_p50_ms ({p50})", "the 90th percentile is never below the median"
        )
    return budget


def _positive(value: Any, name: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: {name} must be a number of seconds above zero, not {value!r}", f"e.g. {name} = 10")
    return float(value)


def _choice(value: Any, allowed: tuple[str, ...], name: str, where: str) -> str:
    if value not in allowed:
        raise InputError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}", f"set {name} to one of them")
    return str(value)


def _pruner(recipe: Recipe, config: SearchConfig, asked: str, where: str) -> str:
    """auto: the median rule when there is one objective and a fine-tune curve to read."""
    curve = bool(recipe["finetune.budget"]) or any(dimension.key == "finetune.budget" for dimension in config.space)
    if asked == "auto":
        return "median" if curve and len(config.objectives) == 1 else "none"
    if asked != "none" and len(config.objectives) > 1:
        raise InputError(f"{where}: pruner {asked} stops trials of one objective only", "drop the pruner, or search one objective")
    if asked != "none" and not curve:
        raise InputError(
            f"{where}: pruner {asked} reads the fine-tune's validation curve, but the recipe does not fine-tune", "set finetune.budget"
        )
    return asked


def search_config(recipe: Recipe, table: Mapping[str, Any], where: str, **given: Any) -> SearchConfig:
    """The settings of a search: ``table`` (a recipe file's ``[search]``) under the options
    ``given`` on the command line (those not None win)."""
    table = {**table, **{key: value for key, value in given.items() if value is not None and key in SEARCH_KEYS}}
    unknown = sorted(set(table) - SEARCH_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown search settings {', '.join(unknown)}", f"use {', '.join(sorted(SEARCH_KEYS))}")
    objectives = tuple(table.get("objectives", ("quality",)))
    if not objectives or len(set(objectives)) != len(objectives):
        raise InputError(f"{where}: objectives must name each of quality, latency or size at most once", 'e.g. ["quality", "latency"]')
    for name in objectives:
        _choice(name, tuple(OBJECTIVES), "objective", where)
    trials = table.get("trials", None if "time" in table else 30)
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise InputError(f"{where}: trials must be a whole number above zero, not {trials!r}", "e.g. trials = 30")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"{where}: seed must be a whole number, not {seed!r}", "e.g. seed = 0")
    space_table = table.get("space")
    space = parse_space(space_table, where) if space_table else default_space(recipe)
    if has_every(space):
        space = expand(space, model_names(recipe), where)
    config = SearchConfig(
        space,
        search_budget(recipe, table, where),
        objectives,
        _choice(table.get("metric", "accuracy"), METRICS, "metric", where),
        _choice(table.get("artifact", "model.tflite"), ARTIFACTS, "artifact", where),
        trials,
        parse_seconds(table["time"], where) if "time" in table else None,
        seed,
        str(table.get("study", "edgetune")),
        sampler=_choice(table.get("sampler", "auto"), SAMPLERS, "sampler", where),
        heartbeat=_positive(table.get("heartbeat", 10.0), "heartbeat", where),
    )
    config = replace(config, pruner=_pruner(recipe, config, _choice(table.get("pruner", "auto"), PRUNERS, "pruner", where), where))
    if config.sampler == "grid":  # a grid ends when every point has run
        config = replace(config, trials=min(config.trials or grid_size(space), grid_size(space)))
    if config.artifact.removeprefix("model.") not in recipe["export.formats"]:
        raise InputError(f"{where}: the search measures {config.artifact} but the recipe does not write it", "add it to export.formats")
    return config


def with_storage(config: SearchConfig, storage: str | None, resume: bool) -> SearchConfig:
    return replace(config, storage=storage, resume=resume)
