"""Pruning toward a budget, one measured cut at a time: ``edgetune compress ... --until
max_latency_p50_ms=5``.

After NetAdapt (Yang et al., ECCV 2018): each step tries one cut per channel group (the next
share of that group's channels, taken from the layer that writes them), compresses each
candidate and measures it on the target. A candidate is kept in the running only when it
made the target faster (or smaller, for a size or memory budget) than the model it came from.
Of those, the step takes the one that loses the least quality per millisecond (or kilobyte)
saved, then compresses it with the recipe's recovery (its fine-tune, when it has one) and
checks every budget. The loop stops at the first model that meets the resource budgets: the
least compressed one the steps reach.

Candidates are screened without the fine-tune, and only the step's chosen model recovers
(``screen="quick"``), or each candidate recovers before it is judged (``"recover"``: NetAdapt's
short-term fine-tune, one fine-tune per group and step). Every
step starts from the original weights with the cuts so far (``prune.layers`` in its
``recipe.toml``), so the model the loop returns replays byte for byte from its recipe. On a
target with a device (this host, a board), latency is measured, so the path the steps take
can differ from run to run; on an estimated target it repeats.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.artifacts import json_bytes, output_folder, publish_folder
from edgetune.errors import InputError
from edgetune.gate.config import TargetBudgets
from edgetune.progress import Progress, silent
from edgetune.prune.apply import kept_count
from edgetune.recipe import Recipe
from edgetune.search.config import search_budget
from edgetune.search.trial import Outcome, run_trial

# The budgets pruning can meet (it makes the model faster and smaller), with their units
RESOURCES = {
    "max_latency_p50_ms": "ms",
    "max_latency_p90_ms": "ms",
    "max_artifact_kb": "KB",
    "max_flash_kb": "KB",
    "max_arena_kb": "KB",
    "max_peak_memory_mb": "MB",
}
HISTORY = "until.json"
SCREENS = ("quick", "recover")


@dataclass(frozen=True)
class UntilConfig:
    budget: TargetBudgets  # the target, its device, and every budget the result must meet
    step: float = 0.1  # the share of a group's channels one cut removes (at least one channel multiple)
    floor: float = 0.1  # a group keeps at least this share of its channels
    max_steps: int = 50
    artifact: str = "model.tflite"
    metric: str = "accuracy"
    screen: str = "quick"  # candidates compressed without the fine-tune (quick), or with it (recover)

    @property
    def primary(self) -> str:
        """The resource budget the progress and the table show (the first one given)."""
        return next(name for name in self.budget.budgets if name in RESOURCES)


def until_config(
    recipe: Recipe, budgets: dict[str, Any], where: str, step: float = 0.1, device: str | None = None, screen: str = "quick"
) -> UntilConfig:
    """The loop's settings; one line when no budget is one pruning can meet, or when the recipe
    prunes in a way the loop cannot tighten."""
    table: dict[str, Any] = {"budgets": budgets, **({"device": device} if device else {})}
    budget = search_budget(recipe, table, where)
    if not any(name in RESOURCES for name in budget.budgets):
        raise InputError(f"{where} names no budget that pruning can meet", f"give one of {', '.join(RESOURCES)}, e.g. max_latency_p50_ms=5")
    if not 0.0 < step < 0.9:
        raise InputError(f"{where}: a step of {step} is not a share of channels", "give a share between 0 and 0.9, e.g. 0.1")
    method = recipe["prune.method"]
    if method and not str(method).startswith("channel:"):
        raise InputError(f"{where} tightens channel pruning, but the recipe prunes by {method}", "drop prune.method, or use channel:RATIO")
    if screen not in SCREENS:
        raise InputError(f"{where}: screening {screen!r} is unknown", f"use {' or '.join(SCREENS)}")
    artifact = "model.tflite" if "tflite" in recipe["export.formats"] else "model.onnx"
    return UntilConfig(budget, step=step, artifact=artifact, screen=screen)


@dataclass
class Cut:
    """One candidate or chosen model: the cuts so far (layer -> share removed) and its figures."""

    ratios: dict[str, float]
    outcome: Outcome
    group: str | None = None  # the group this cut tightened (None: the starting model)
    note: str = ""
    report: dict[str, Any] = field(default_factory=dict)  # its compress report (empty when it failed)

    @property
    def quality(self) -> float | None:
        return self.outcome.quality

    def value(self, budget: str) -> float | None:
        """A budget's figure for this model, as its check read it (the largest, when the
        budget checks both artifacts)."""
        values = [check.get("value") for check in self.outcome.checks if check["name"] == budget]
        numbers = [float(value) for value in values if isinstance(value, (int, float)) and not isinstance(value, bool)]
        return max(numbers) if numbers else None

    def load(self) -> float | None:
        """The share of its limit that the most used resource budget takes (<= 1: all met):
        what a cut must lower."""
        shares = []
        for check in self.outcome.checks:
            value, limit = self.value(check["name"]), check.get("limit")
            if check["name"] in RESOURCES and value is not None and isinstance(limit, (int, float)) and limit > 0:
                shares.append(value / float(limit))
        return max(shares) if shares else None

    def to_dict(self) -> dict[str, Any]:
        o, load = self.outcome, self.load()
        return {
            "group": self.group,
            "layers": dict(sorted(self.ratios.items())),
            "quality": o.quality,
            "latency_ms": o.latency_ms,
            "latency_kind": o.latency_kind,
            "size_kb": None if o.size_kb is None else round(o.size_kb, 2),
            "budget_load": None if load is None else round(load, 4),
            "figures": {check["name"]: self.value(check["name"]) for check in o.checks},
            "failure": o.failure,
            "note": self.note,
        }


def _recipe(base: Recipe, ratios: dict[str, float], recover: bool, where: str) -> Recipe:
    changes: dict[str, Any] = {"prune.layers": {**base["prune.layers"], **ratios}}
    if not base["prune.method"]:
        changes["prune.method"] = "channel:0"
    if not recover:
        changes["finetune.budget"] = None
        changes["finetune.qat"] = False
    return base.updated(changes, where)


def _groups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The groups the starting model's pruning could cut (not kept whole)."""
    return [group for group in report.get("pruning", {}).get("groups", []) if not group.get("kept_whole")]


def _next_share(group: dict[str, Any], kept: int, step: float, floor: float, multiple: int) -> float | None:
    """The share of ``group``'s channels to remove so that it keeps fewer than ``kept``: at least
    ``step`` of them more, rounded to the target's channel multiple; None at the floor."""
    channels = int(group["before"])
    lowest = max(kept_count(channels, 1.0 - floor, multiple), 1)
    wanted = max(kept - max(int(round(step * channels)), 1), lowest)
    if wanted >= kept:
        return None
    for target in range(wanted, lowest - 1, -1):
        share = round(1.0 - target / channels, 4)
        if kept_count(channels, share, multiple) < kept:
            return share
    return None


class _Workspace:
    """Candidate folders beside the output folder (one file system), removed at the end."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{out.name}.until.", dir=out.parent))
        self.count = 0

    def folder(self) -> str:
        self.count += 1
        return str(self.root / f"{self.count:04d}")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _measure(
    base: Recipe, ratios: dict[str, float], config: UntilConfig, space: _Workspace, recover: bool, group: str | None = None
) -> Cut:
    """``ratios`` compressed (with the recipe's recovery, or without) and measured."""
    outcome = Outcome(space.count, {}, space.folder())
    recipe = _recipe(base, ratios, recover, "compress --until")
    run_trial(recipe, outcome, config.budget, config.metric, config.artifact)
    report = json.loads((Path(outcome.folder) / "report.json").read_text()) if outcome.failure is None else {}
    return Cut(ratios, outcome, group, report=report)


def resources_met(outcome: Outcome) -> bool:
    return all(check["passed"] for check in outcome.checks if check["name"] in RESOURCES)


def _candidates(base: Recipe, current: Cut, config: UntilConfig, space: _Workspace, progress: Progress) -> list[Cut]:
    """One cut per group that can give more channels, each compressed (no fine-tune) and
    measured; those that did not lower the driving figure are marked so."""
    multiple = int(current.report.get("pruning", {}).get("config", {}).get("channel_multiple", 1))
    groups = _groups(current.report)
    cuts = []
    for index, group in enumerate(groups):
        share = _next_share(group, int(group["after"]), config.step, config.floor, multiple)
        if share is None:
            continue
        ratios = {**current.ratios, group["layers"][0]: share}
        cut = _measure(base, ratios, config, space, config.screen == "recover", group["layers"][0])
        before, after = current.load(), cut.load()
        if cut.outcome.failure is not None:
            cut.note = f"failed: {cut.outcome.failure}"
        elif before is not None and after is not None and after >= before:
            cut.note = f"no lower: {_figures(cut, config)}"
        keeps = kept_count(int(group["before"]), share, multiple)
        progress(
            index + 1,
            len(groups),
            f"cut {group['layers'][0]} to {keeps} of {group['before']} channels: {cut.note or _figures(cut, config)}",
        )
        cuts.append(cut)
    return cuts


def _figures(cut: Cut, config: UntilConfig) -> str:
    quality, value = cut.quality, cut.value(config.primary)
    if quality is None or value is None:
        return "no figures"
    return f"{config.metric} {quality:.4g}, {value:.4g} {RESOURCES[config.primary]}"


def _pick(current: Cut, cuts: list[Cut], config: UntilConfig) -> Cut | None:
    """The kept candidate that loses the least quality per share of the budget saved."""
    kept = [cut for cut in cuts if not cut.note and cut.quality is not None and cut.load() is not None]
    if not kept:
        return None
    before_q, before_load = current.quality or 0.0, current.load() or 0.0

    def cost(cut: Cut) -> tuple[float, str]:
        saved = before_load - (cut.load() or 0.0)
        return ((before_q - (cut.quality or 0.0)) / max(saved, 1e-12), cut.group or "")

    return min(kept, key=cost)


def _start(recipe: Recipe, config: UntilConfig, space: _Workspace) -> Cut:
    start = _measure(recipe, {}, config, space, recover=True)
    if start.outcome.failure is not None:
        what, _, fix = start.outcome.failure.partition("; ")
        raise InputError(what, fix or "fix the recipe")
    return start


def _step(recipe: Recipe, current: Cut, config: UntilConfig, space: _Workspace, progress: Progress) -> tuple[Cut | None, list[Cut]]:
    """One step: the candidates, the chosen cut recovered (when the recipe fine-tunes)."""
    cuts = _candidates(recipe, current, config, space, progress)
    chosen = _pick(current, cuts, config)
    if chosen is None or not (recipe["finetune.budget"] or recipe["finetune.qat"]) or config.screen == "recover":
        return chosen, cuts
    recovered = _measure(recipe, chosen.ratios, config, space, True, chosen.group)
    if recovered.outcome.failure is not None:
        chosen.note = f"recovery failed: {recovered.outcome.failure}"
        return None, cuts
    return recovered, cuts


def tighten(recipe: Recipe, config: UntilConfig, out_dir: str | Path, progress: Progress = silent) -> dict[str, Any]:
    """Prune ``recipe``'s model step by step until the resource budgets are met; the chosen
    model's folder published to ``out_dir`` with ``until.json`` (every step and candidate).
    The summary: ``met`` (every budget), ``report`` (the chosen model's) and the steps."""
    out = output_folder(out_dir)
    space = _Workspace(out)
    try:
        current = _start(recipe, config, space)
        steps: list[dict[str, Any]] = [{"step": 0, "chosen": current.to_dict(), "candidates": []}]
        progress(0, 0, f"start: {_figures(current, config)}")
        stopped = "met" if resources_met(current.outcome) else "steps"
        for number in range(1, config.max_steps + 1):
            if stopped == "met":
                break
            chosen, cuts = _step(recipe, current, config, space, progress)
            steps.append({"step": number, "chosen": chosen.to_dict() if chosen else None, "candidates": [c.to_dict() for c in cuts]})
            kept = {current.outcome.folder, chosen.outcome.folder if chosen else ""}
            for dropped in {cut.outcome.folder for cut in cuts} - kept:  # a large model's candidates fill a disk
                shutil.rmtree(dropped, ignore_errors=True)
            if chosen is None:
                stopped = "no cut lowers it" if cuts else "every group is at its floor"
                break
            if current.outcome.folder != chosen.outcome.folder:
                shutil.rmtree(current.outcome.folder, ignore_errors=True)
            current = chosen
            progress(number, 0, f"step {number}: cut {chosen.group}: {_figures(current, config)}")
            stopped = "met" if resources_met(current.outcome) else "steps"
        summary = _summary(config, current, steps, stopped, space.count)
        folder = Path(current.outcome.folder)
        files = {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}
        publish_folder(out, {**files, HISTORY: json_bytes(summary)})
        summary["report"] = current.report
        return summary
    finally:
        space.close()


def _summary(config: UntilConfig, current: Cut, steps: list[dict[str, Any]], stopped: str, compressions: int) -> dict[str, Any]:
    outcome = current.outcome
    return {
        "schema": "edgetune.until",
        "version": 1,
        "target": config.budget.name,
        "budgets": config.budget.budgets,
        "artifact": config.artifact,
        "screen": config.screen,
        "shown": config.primary,
        "unit": RESOURCES[config.primary],
        "stopped": stopped,
        "resources_met": resources_met(outcome),
        "met": outcome.feasible,
        "checks": outcome.checks,
        "chosen": current.to_dict(),
        "steps": steps,
        "compressions": compressions,
    }
