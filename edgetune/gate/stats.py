"""Is a slowdown real? A rank test on repeated measurements, and a size threshold tied to the
measurement noise.

A latency regression fails the gate only when it is both

- statistically significant: the Mann-Whitney U test (one-sided: the new medians are
  larger) at a strict level, p < 0.002 by default as in airspeed velocity (asv), with the
  exact null distribution of U for small samples; and
- large: the relative slowdown (of the middle repetition's statistic) exceeds
  ``max(min_slowdown, 3 x CV)``, CV being the coefficient of variation of the repetitions on
  this machine (CI runners show a CV near 2.7%, so a plain 2% threshold fails about half the
  time on noise alone).

Each repetition contributes one number (the gate uses a low quantile of its times, see
``edgetune.gate.run``); the functions here do not care which. Repetitions that another
process disturbed as a whole (a neighbour busy for seconds) are set aside first; when the
baseline's artifacts are re-measured in the same run, the gate measures more repetitions until
enough undisturbed ones remain. Each side is screened on its own, so a slowdown that hits fewer
than half of the new build's repetitions reads as interference, not as a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.002
NOISE_MULTIPLE = 3.0


@lru_cache(maxsize=64)
def _u_counts(n: int, m: int) -> tuple[int, ...]:
    """How many of the C(n+m, n) orderings give each U = 0..n*m (no ties)."""
    # f[i][j][u]: orderings of i values of the first sample and j of the second with statistic u.
    table = [[[0] * (n * m + 1) for _ in range(m + 1)] for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                table[i][j][0] = 1
                continue
            for u in range(i * j + 1):
                # The largest value belongs to the first sample (it beats all j of the second) or to the second.
                table[i][j][u] = (table[i - 1][j][u - j] if u >= j else 0) + table[i][j - 1][u]
    return tuple(table[n][m])


def mann_whitney_greater(new: list[float], base: list[float]) -> tuple[float, float]:
    """U of ``new`` over ``base`` and the one-sided p-value of "new tends to be larger".

    Exact for samples of up to 20 each (midranks for ties, which timings rarely have);
    the normal approximation with a tie correction beyond that.
    """
    n, m = len(new), len(base)
    values = np.concatenate([np.asarray(new, float), np.asarray(base, float)])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = float(ranks[:n].sum() - n * (n + 1) / 2)
    if n <= 20 and m <= 20:
        counts = _u_counts(n, m)
        at_least = sum(counts[math.ceil(u - 1e-9) :])
        return u, at_least / math.comb(n + m, n)
    _, tie_sizes = np.unique(values, return_counts=True)
    total = n + m
    variance = n * m / 12 * ((total + 1) - float((tie_sizes**3 - tie_sizes).sum()) / (total * (total - 1)))
    z = (u - n * m / 2 - 0.5) / math.sqrt(variance) if variance > 0 else 0.0
    return u, 0.5 * math.erfc(z / math.sqrt(2))


def cv(values: list[float]) -> float:
    """The coefficient of variation, estimated robustly: 1.4826 x the median absolute deviation
    over the median (the standard deviation's consistent estimate for normal noise), so that one
    disturbed repetition does not inflate the noise floor of every comparison."""
    array = np.asarray(values, float)
    centre = float(np.median(array)) if len(array) else 0.0
    if len(array) < 2 or centre <= 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(array - centre)) / centre)


def interference_free(values: list[float], floor: float = 0.02) -> list[float]:
    """The repetitions that no other process disturbed. Interference only adds time, so the
    undisturbed level is set by the faster half: its median and robust spread (1.4826 x MAD).
    A repetition more than 3 such spreads, and more than ``floor`` (2%), above that level was
    disturbed. The slowest go first, and fewer than half are ever set aside, so that a
    machine slow all along is measured as it is (its noise then raises the threshold).

    The faster half matters when a neighbour comes and goes: with 40% of the repetitions
    disturbed, the median and MAD of all of them sit between the two levels and would keep
    most of the disturbed ones."""
    if len(values) < 3:
        return list(values)
    ordered = np.sort(np.asarray(values, float))
    faster = ordered[: (len(ordered) + 1) // 2]
    level = float(np.median(faster))
    spread = 1.4826 * float(np.median(np.abs(faster - level)))
    limit = level + max(3 * spread, floor * level)
    aside = min(int((ordered > limit).sum()), (len(ordered) - 1) // 2)
    slowest = set(np.argsort(np.asarray(values, float), kind="stable")[len(values) - aside :].tolist())
    return [float(v) for i, v in enumerate(values) if i not in slowest]


@dataclass(frozen=True)
class Regression:
    slowdown: float  # relative change of the repetitions' median, new over base, minus 1
    p_value: float
    threshold: float  # the slowdown that counts as large
    noise_cv: float
    significant: bool
    large: bool
    set_aside: tuple[int, int] = (0, 0)  # disturbed repetitions left out, baseline and new

    @property
    def regressed(self) -> bool:
        return self.significant and self.large

    def to_dict(self) -> dict[str, Any]:
        return {
            "slowdown": self.slowdown,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "noise_cv": self.noise_cv,
            "significant": self.significant,
            "large": self.large,
            "regressed": self.regressed,
            "set_aside": list(self.set_aside),
        }


def latency_regression(base: list[float], new: list[float], alpha: float = DEFAULT_ALPHA, min_slowdown: float = 0.05) -> Regression:
    """Compare the per-repetition statistics of the baseline and of the new build, leaving out
    the repetitions that interference disturbed (``interference_free``). Both sides lose the
    same number, their slowest: comparing the fastest 7 of one side with all 9 of the other
    would favour the first even when nothing changed."""
    drop = max(len(base) - len(interference_free(base)), len(new) - len(interference_free(new)))
    set_aside = (min(drop, (len(base) - 1) // 2), min(drop, (len(new) - 1) // 2))
    base, new = sorted(base)[: len(base) - set_aside[0]], sorted(new)[: len(new) - set_aside[1]]
    noise = max(cv(base), cv(new))
    threshold = max(min_slowdown, NOISE_MULTIPLE * noise)
    slowdown = float(np.median(new) / np.median(base) - 1.0)
    _, p_value = mann_whitney_greater(new, base)
    return Regression(slowdown, p_value, threshold, noise, p_value < alpha, slowdown > threshold, set_aside)
