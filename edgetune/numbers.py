"""Numbers from users' text: parsed once, and finite (NaN and infinity are never a setting)."""

from __future__ import annotations

import math

from edgetune.errors import InputError


def parse_finite(text: str, what: str, example: str) -> float:
    """``text`` as a finite float, or an InputError naming ``what`` with an ``example``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{what} {text!r} is not a number", f"e.g. {example}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r} is not a finite number", f"e.g. {example}")
    return value


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``1x3x224x224`` (batch first) to the per-sample shape (3, 224, 224)."""
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"input shape {text!r} is not like 1x3x224x224", "give dimensions joined by x, batch first") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise InputError(f"input shape {text!r} needs a batch and at least one positive dimension", "e.g. 1x3x224x224")
    return dims[1:]
