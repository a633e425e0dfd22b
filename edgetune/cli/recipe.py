"""``edgetune recipe keys|show|check``: the recipe reference, and a recipe file as edgetune reads it."""

from __future__ import annotations

import sys
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.group("recipe")
def group() -> None:
    """Recipes: every setting of a compression run in one TOML file (edgetune compress --recipe)."""


@group.command("keys")
@common_options
def keys(as_json: bool) -> None:
    """Every recipe key, with its type, default and meaning."""
    from edgetune.recipe import KEYS

    rows = [{"key": k.name, "type": k.kind, "default": k.default, "help": k.help} for k in KEYS]
    emit({"schema": "edgetune.recipe-keys", "version": 1, "keys": rows}, as_json, _human_keys)


@group.command("show")
@click.argument("file", required=False)
@click.option("--recipe", "recipe_file", metavar="FILE", help="The recipe file (the same as FILE).")
@click.option("--set", "sets", metavar="KEY=VALUE", multiple=True, help="Set one key over the file.")
@common_options
def show(file: str | None, recipe_file: str | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Print the effective recipe of FILE (or the defaults) with --set applied, as TOML. FILE may
    be a pyproject.toml ([tool.edgetune.recipe]) or an edgetune.toml ([recipe])."""
    from edgetune.errors import InputError

    if file and recipe_file and file != recipe_file:
        raise InputError("two recipe files are given", "give FILE or --recipe FILE")
    recipe = _effective(file or recipe_file, sets)
    if as_json:
        emit({"schema": "edgetune.recipe", "version": 1, "recipe": dict(recipe.values)}, True, str)
    else:
        sys.stdout.write(recipe.to_toml())


@group.command("check")
@click.argument("file")
@common_options
def check(file: str, as_json: bool) -> None:
    """Check FILE: syntax, keys, types and values, as compress would (without running)."""
    from edgetune.recipe.build import configs

    recipe = _effective(file, ())
    configs(recipe)  # builds every stage's options, which check their values
    document = {"schema": "edgetune.recipe-check", "version": 1, "file": file, "valid": True, "set": recipe.differences()}
    emit(document, as_json, lambda d: f"{d['file']}: valid ({len(d['set'])} keys differ from the defaults)")


def _effective(file: str | None, sets: tuple[str, ...]) -> Any:
    from edgetune.recipe import Recipe, load, parse_sets

    recipe = load(file) if file else Recipe()
    return recipe.updated(parse_sets(sets), "--set")


def _human_keys(document: dict[str, Any]) -> str:
    return table(
        [(k["key"], k["type"], "-" if k["default"] is None else str(k["default"]), k["help"]) for k in document["keys"]],
        ("key", "type", "default", "meaning"),
    )
