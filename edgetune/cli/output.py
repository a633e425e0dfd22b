"""Shared CLI plumbing: common options, JSON or human output."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from edgetune.artifacts import json_text

F = TypeVar("F", bound=Callable[..., Any])


def common_options(fn: F) -> F:
    """``--json`` and ``--debug`` on every command (``--debug`` is read by the error boundary)."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout and nothing else.")(fn)
    fn = click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks and library warnings.")(fn)
    return fn


def emit(document: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        sys.stdout.write(json_text(document) + "\n")
    else:
        sys.stdout.write(human(document).rstrip("\n") + "\n")
    sys.stdout.flush()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    all_rows: list[Sequence[Any]] = ([header] if header else []) + list(rows)
    widths = [max(len(str(row[i])) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = []
    for index, row in enumerate(all_rows):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if header and index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


class FiniteFloat(click.FloatRange):
    """A click option type for floats that refuses NaN and infinity (they pass range checks,
    since every comparison with NaN is false)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False) -> None:
        super().__init__(min, max, min_open, max_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def pairs(items: tuple[str, ...], option: str) -> dict[str, Any]:
    """``NAME=VALUE`` items (budgets, space entries) as a dict, each value read as TOML."""
    from edgetune.errors import InputError
    from edgetune.recipe.toml import parse_value

    pairs: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{option} {item!r} is not NAME=VALUE", f"e.g. {option} max_latency_p50_ms=0.5")
        pairs[name.strip()] = parse_value(text.strip())
    return pairs
