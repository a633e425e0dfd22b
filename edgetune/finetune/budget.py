"""Fine-tune budgets: wall clock (``90s``, ``5m``), steps (``500steps``) or epochs (``3epochs``),
and a training-memory budget (``512MB``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgetune.errors import InputError

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|steps?|epochs?)\s*$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(kb|kib|mb|mib|gb|gib)\s*$")
_MEMORY_UNITS = {"kb": 1e3, "kib": 2**10, "mb": 1e6, "mib": 2**20, "gb": 1e9, "gib": 2**30}


@dataclass(frozen=True)
class Budget:
    kind: str  # "seconds", "steps" or "epochs"
    amount: float

    @property
    def deterministic(self) -> bool:
        """Step and epoch budgets repeat exactly; a wall-clock budget's step count depends on load."""
        return self.kind != "seconds"

    def share(self, parts: int) -> Budget:
        """One of ``parts`` equal shares of this budget (at least one step)."""
        amount = self.amount / parts
        return Budget(self.kind, amount if self.kind == "seconds" else float(max(1, int(amount))))

    def __str__(self) -> str:
        unit = {"seconds": "s", "steps": "steps", "epochs": "epochs"}[self.kind]
        return f"{self.amount:g}{unit}"


def parse_budget(text: str) -> Budget:
    match = _PATTERN.match(text.lower())
    if not match:
        raise InputError(f"fine-tune budget {text!r} is not like 90s, 5m, 500steps or 3epochs", "give a number and a unit")
    amount, unit = float(match[1]), match[2]
    if amount <= 0:
        raise InputError(f"fine-tune budget {text!r} is empty", "give a positive budget")
    if unit in ("s", "sec"):
        return Budget("seconds", amount)
    if unit in ("m", "min"):
        return Budget("seconds", amount * 60)
    if unit.startswith("step"):
        return Budget("steps", float(int(amount)))
    return Budget("epochs", float(int(amount)))


def parse_memory(text: str) -> int:
    """``512MB``, ``1.5GiB`` to bytes."""
    match = _MEMORY.match(text.lower())
    if not match or float(match[1]) <= 0:
        raise InputError(f"memory budget {text!r} is not like 512MB or 1GB", "give a positive number and a unit (KB, MB, GB, MiB, GiB)")
    return round(float(match[1]) * _MEMORY_UNITS[match[2]])
