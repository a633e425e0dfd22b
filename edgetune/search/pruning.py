"""Stopping hopeless trials early, on the fine-tune's validation curve.

A trial that recovers with a fine-tune reports its validation figure (accuracy, or minus the
MSE) at every validation, numbered 1, 2, 3... across the trial. Optuna keeps the curve, and a
pruner decides after each report whether the trial goes on:

- ``median``: stop a trial whose best figure so far is below the median of the finished
  trials that met every budget, at the same validation (after the first two validations, and
  once four such trials have finished). Only trials that met the budgets count: a trial that
  is more accurate but too slow is no rival, and the fast, less accurate one must not be
  stopped for trailing it.
- ``halving``: Optuna's asynchronous successive halving on the same curve (against every
  finished trial, whatever its budgets).

A stopped trial leaves no folder; ``search.json`` gives where and why it stopped. Optuna prunes
only studies with one objective.
"""

from __future__ import annotations

import statistics
from typing import Any

PRUNERS = ("auto", "median", "halving", "none")


class TrialStopped(BaseException):
    """The pruner stopped this trial (a BaseException: no handler in the pipeline swallows it;
    the pipeline publishes its folder in one step, so the trial leaves none)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _best_until(values: dict[int, float], step: int) -> float | None:
    seen = [value for at, value in values.items() if at <= step]
    return max(seen) if seen else None


def make_pruner(optuna: Any, kind: str, startup: int = 4, warmup: int = 2) -> Any:
    """The Optuna pruner for ``kind`` (``median``, ``halving`` or ``none``)."""
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()

    class FeasibleMedian(optuna.pruners.BasePruner):  # type: ignore[misc]
        """Median stopping against the finished trials that met every budget."""

        def __init__(self) -> None:
            self.reasons: dict[int, str] = {}  # why a trial was stopped, for its record

        def prune(self, study: Any, trial: Any) -> bool:
            step = trial.last_step
            if step is None or step < warmup:
                return False
            rivals = []
            for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                best = _best_until(other.intermediate_values, step)
                if best is not None and other.user_attrs.get("outcome", {}).get("feasible"):
                    rivals.append(best)
            if len(rivals) < startup:
                return False
            mine = _best_until(trial.intermediate_values, step)
            median = statistics.median(rivals)
            if mine is not None and mine < median:
                self.reasons[trial.number] = (
                    f"stopped at validation {step}: best {mine:.4g} below the median {median:.4g}"
                    f" of {len(rivals)} trials that met the budgets"
                )
                return True
            return False

    return FeasibleMedian()


class CurveReporter:
    """A silent progress callback whose ``validation`` hook reports the fine-tune's curve to
    the Optuna trial and raises :class:`TrialStopped` when the pruner says so."""

    def __init__(self, trial: Any, pruner: Any) -> None:
        self.trial = trial
        self.reasons: dict[int, str] = getattr(pruner, "reasons", {})
        self.count = 0

    def __call__(self, done: int, total: int, label: str) -> None:
        pass

    def validation(self, value: float) -> None:
        self.count += 1
        self.trial.report(float(value), self.count)
        if self.trial.should_prune():
            default = f"stopped at validation {self.count} by successive halving ({value:.4g})"
            reason = self.reasons.pop(self.trial.number, default)
            raise TrialStopped(reason)
