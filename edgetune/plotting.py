"""Matplotlib, when it is installed, drawing to files (no screen): for every plot edgetune writes."""

from __future__ import annotations

from typing import Any

from edgetune.errors import InputError


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or an InputError saying ``what`` needs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"{what} needs matplotlib", "pip install 'edgetune[plots]'") from None
    return plt
