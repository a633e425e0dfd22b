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
