"""One trial of a search: a recipe compressed into its own folder, then measured and checked
against the budgets the way the gate checks a release.

A trial that edgetune refuses (a ratio pruning cannot reach, a technique that does not apply)
is a failed trial with its one-line reason, not a failed search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError
from edgetune.gate.config import TargetBudgets
from edgetune.progress import Progress, silent
from edgetune.recipe import Recipe

# Quality figures from the compress report, per artifact: their path in report["evaluation"]
# Without labels, a trial that pruned or fine-tuned is compared with the model as given
# (report["evaluation"]["vs_original"]): against its own fp32 it would only show the int8 cost.
QUALITY: dict[str, dict[str, tuple[str, ...]]] = {
    "accuracy": {"model.onnx": ("int8_accuracy",), "model.tflite": ("tflite", "accuracy")},
    "sqnr": {"model.onnx": ("int8_vs_fp32", "sqnr_db"), "model.tflite": ("tflite", "sqnr_db")},
    "agreement": {"model.onnx": ("int8_vs_fp32", "top1_agreement"), "model.tflite": ("tflite", "top1_agreement_with_fp32")},
}
ORIGINAL = {"model.onnx": "onnx_int8", "model.tflite": "tflite"}


@dataclass
class Outcome:
    """What one trial gave: its figures, each budget's check, or why it failed."""

    number: int
    params: dict[str, Any]
    folder: str
    quality: float | None = None
    latency_ms: float | None = None
    size_kb: float | None = None
    latency_kind: str = ""  # measured (this host or a board) or estimated
    size_kind: str = "file"  # the artifact's bytes, or planned: its 4-bit weights packed two a byte
    checks: list[dict[str, Any]] = field(default_factory=list)
    violations: list[float] = field(default_factory=list)  # per budget: > 0 broken, by that share of its limit
    failure: str | None = None
    stopped: bool = False  # the pruner stopped it on its fine-tune curve
    seconds: float = 0.0
    repeat_of: int | None = None  # the earlier trial with the same keys, whose figures it took

    @property
    def feasible(self) -> bool:
        return self.failure is None and all(check["passed"] for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": self.params,
            "folder": self.folder,
            "quality": self.quality,
            "latency_ms": self.latency_ms,
            "latency_kind": self.latency_kind,
            "size_kb": self.size_kb,
            "size_kind": self.size_kind,
            "feasible": self.feasible,
            "checks": self.checks,
            "failure": self.failure,
            "stopped_early": self.stopped,
            "seconds": round(self.seconds, 2),
            "repeat_of": self.repeat_of,
        }


def quality_of(report: dict[str, Any], metric: str, artifact: str) -> float | None:
    """The trial's quality figure from its report; accuracy falls back to agreement when the
    evaluation data has no labels. Agreement and SQNR are against the model as given when the
    trial pruned or fine-tuned it."""
    original = report.get("evaluation", {}).get("vs_original", {}).get(ORIGINAL[artifact])
    if metric != "accuracy" and original is not None:
        figure = original.get("sqnr_db" if metric == "sqnr" else "top1_agreement")
        return float(figure) if isinstance(figure, (int, float)) else None
    value: Any = report.get("evaluation", {})
    for part in QUALITY[metric][artifact]:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None and metric == "accuracy":
        return quality_of(report, "agreement", artifact)
    return float(value) if isinstance(value, (int, float)) else None


def _violation(check: Any) -> float:
    """How far a check is from passing, as a share of its limit (<= 0: met)."""
    if check.value is None or not isinstance(check.value, (int, float)) or isinstance(check.value, bool):
        return 0.0 if check.passed else 1.0
    scale = max(abs(float(check.limit)), 1e-9)
    over = (float(check.value) - float(check.limit)) if check.name.startswith("max_") else (float(check.limit) - float(check.value))
    return over / scale if not check.passed else min(over / scale, 0.0)


def size_of(report: dict[str, Any], path: Path) -> tuple[float, str]:
    """The artifact's KiB; with 4-bit weights (stored as int8, so that int8 kernels run them),
    the size once they are packed two a byte, as a 4-bit deployment stores them: otherwise a
    search that chooses bits per layer would see no size to gain."""
    size = path.stat().st_size
    weights = report.get("quantization", {}).get("weights")
    if not weights:
        return size / 1024, "file"
    return (size - weights["int8_bytes"] + weights["packed_int4_bytes"]) / 1024, "planned: 4-bit weights packed two a byte"


def run_trial(recipe: Recipe, outcome: Outcome, budget: TargetBudgets, metric: str, artifact: str, progress: Progress = silent) -> Outcome:
    """Compress ``recipe`` into ``outcome.folder``, measure ``artifact`` on the budget's target
    and check every budget; ``outcome`` filled in and returned."""
    from edgetune.gate.run import measure_briefly, measurement_checks, report_checks
    from edgetune.recipe import run

    start = time.monotonic()
    folder = Path(outcome.folder)
    try:
        result = run(recipe, folder, progress=progress)
        figures = measure_briefly(budget, folder / artifact)
    except EdgetuneError as exc:
        outcome.failure = exc.one_line().removeprefix("error: ")
        outcome.seconds = time.monotonic() - start
        return outcome
    checks = report_checks(budget, result.report, folder) + measurement_checks(budget, {artifact: figures})
    outcome.quality = quality_of(result.report, metric, artifact)
    outcome.latency_ms = figures.get("p50_ms")
    outcome.latency_kind = str(figures.get("kind", ""))
    outcome.size_kb, outcome.size_kind = size_of(result.report, folder / artifact)
    outcome.checks = [check.to_dict() for check in checks]
    outcome.violations = [_violation(check) for check in checks]
    outcome.seconds = time.monotonic() - start
    return outcome
