"""``edgetune targets list|show``: the hardware target profiles."""

from __future__ import annotations

from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.group("targets")
def group() -> None:
    """Hardware target profiles (targets/*.toml)."""


@group.command("list")
@common_options
def list_targets(as_json: bool, debug: bool) -> None:
    """List the known targets."""
    from edgetune.targets import all_targets

    doc = {"targets": [t.to_dict() for t in all_targets()]}
    emit(doc, as_json, _human_list)


@group.command("show")
@click.argument("name")
@common_options
def show(name: str, as_json: bool, debug: bool) -> None:
    """Show one target profile."""
    from edgetune.targets import load_target

    emit(load_target(name).to_dict(), as_json, _human_show)


def _human_list(doc: dict[str, Any]) -> str:
    rows = [
        (t["name"], t["class"], str(t["cores"] or "auto"), f"{t['peak']['int8_gmacs']:g}", t["runtime"], t["description"])
        for t in doc["targets"]
    ]
    return table(rows, ("name", "class", "cores", "int8 GMAC/s", "runtime", "description"))


def _human_show(doc: dict[str, Any]) -> str:
    rows = [(key, str(value)) for key, value in doc.items() if key not in ("peak", "budgets")]
    rows += [(f"peak.{key}", str(value)) for key, value in doc["peak"].items()]
    rows += [(f"budgets.{key}", str(value)) for key, value in doc["budgets"].items()]
    return table(rows)
