"""The recipe: one frozen, versioned description of a compression run.

Values resolve in one order, each layer over the one before: the defaults in ``keys.py``, then
a recipe file, then the command-line options given explicitly, then ``--set KEY=VALUE``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.recipe.keys import BY_NAME, KEYS, SECTIONS, Key
from edgetune.recipe.rules import RULES
from edgetune.recipe.toml import dump, key_line, parse_value
from edgetune.resources import read_toml

VERSION = 1
FILE_NAME = "recipe.toml"  # written into every output folder: replay it with --recipe
COMMAND_LINE = "the command line"  # the origin of values given as options


@dataclass(frozen=True)
class Recipe:
    """Every key's value (unset keys hold None); built only through :meth:`updated`, which checks."""

    values: Mapping[str, Any] = field(default_factory=lambda: {key.name: key.default for key in KEYS})
    origins: Mapping[str, str] = field(default_factory=dict)  # key -> where its value was set (a file, --set, ...)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def updated(self, changes: Mapping[str, Any], where: str, text: str | None = None, prefix: str = "") -> Recipe:
        """This recipe with ``changes`` applied, each key and value checked (``where`` names
        their origin in errors; ``text``, a file's text, lets them give its line; ``prefix``,
        the table the recipe sits under in that file)."""
        merged, origins = dict(self.values), dict(self.origins)
        for name, value in changes.items():
            line = key_line(text, name, prefix) if text is not None else None
            at = f"{where}, line {line}" if line else where
            # Options given on the command line are checked by their stages, whose errors name the option.
            merged[name] = check(name, value, at, rules=where != COMMAND_LINE)
            origins[name] = where
        return Recipe(merged, origins)

    def set_in(self, section: str) -> list[str]:
        """Where the keys of ``section`` that were set came from, in order (files, --set, ...)."""
        return list(dict.fromkeys(origin for name, origin in self.origins.items() if name.startswith(section + ".")))

    def to_toml(self) -> str:
        """The recipe as TOML, sections in the reference order; unset keys are left out."""
        header = f"# edgetune recipe: replay with `edgetune compress --recipe {FILE_NAME} -o OUT`\nversion = {VERSION}\n"
        return header + dump({name: value for name, value in self.values.items() if value is not None}, SECTIONS)

    def with_absolute_paths(self) -> Recipe:
        """Paths that name files here made absolute, so that the recipe replays from anywhere."""
        paths: tuple[str, ...] = ("model.source", "model.weights", "data.calib", "data.eval", "data.train")
        paths += ("finetune.teacher", "finetune.teacher_weights", "finetune.init", "data.tokenizer")
        named = ("target", "data.preprocess")  # a bundled name, or a path when it ends in .toml
        changed = {name: _absolute(self.values[name]) for name in paths if self.values[name] is not None}
        if self.values["finetune.augment"]:
            changed["finetune.augment"] = _absolute_augment(self.values["finetune.augment"])
        changed |= {name: os.path.abspath(self.values[name]) for name in named if str(self.values[name] or "").endswith(".toml")}
        return Recipe({**self.values, **changed}, self.origins)

    def differences(self) -> dict[str, Any]:
        """The keys set to something other than their default."""
        return {key.name: self.values[key.name] for key in KEYS if self.values[key.name] != key.default}


def load(path: str | Path) -> Recipe:
    """A recipe file, checked: version, sections, keys, types and values. A project's
    ``pyproject.toml`` holds its recipe under ``[tool.edgetune.recipe]``, and an ``edgetune.toml``
    (the gate's file) under ``[recipe]``."""
    path = Path(path)
    document = read_toml(path, "recipe")
    document, prefix = _recipe_table(document, path)
    return from_table(document, str(path), path.read_text(), prefix)


def from_table(table: Mapping[str, Any], where: str, text: str | None = None, prefix: str = "") -> Recipe:
    """A recipe from a TOML table of its sections; or, in a project file's ``[recipe]``, of
    compress's long option names (the gate's older form). ``out`` there is the gate's folder."""
    from edgetune.recipe.options import OPTION_KEYS, from_options, is_option_table

    table = dict(table)
    table.pop("search", None)  # the search command's settings (edgetune.search.config)
    if prefix:
        table.pop("out", None)
    if prefix and is_option_table(table):
        unknown = sorted(name for name in table if name not in OPTION_KEYS)
        if unknown:
            raise InputError(f"{where} has unknown options: {', '.join(unknown)}", "use compress's long option names, or recipe keys")
        return Recipe().updated(from_options(table), where)
    version = table.pop("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"recipe {where}: version must be a whole number", f"this edgetune writes version {VERSION}")
    if version > VERSION:
        raise InputError(f"recipe {where} was written by a newer edgetune (recipe version {version})", "upgrade edgetune")
    return Recipe().updated(flatten(table, where, text, prefix), where, text, prefix)


def _recipe_table(document: dict[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """The recipe inside a project file, and the table prefix its keys sit under."""
    if path.name == "pyproject.toml":
        table = document.get("tool", {}).get("edgetune", {}).get("recipe")
        if not isinstance(table, dict):
            raise InputError(
                f"{path} has no [tool.edgetune.recipe] table", "put the recipe's sections under [tool.edgetune.recipe.<section>]"
            )
        return dict(table), "tool.edgetune.recipe."
    if path.name == "edgetune.toml":
        table = document.get("recipe")
        if not isinstance(table, dict):
            raise InputError(f"{path} has no [recipe] table", "put the recipe's sections under [recipe.<section>]")
        return dict(table), "recipe."
    return document, ""


def flatten(document: Mapping[str, Any], where: str, text: str | None = None, prefix: str = "") -> dict[str, Any]:
    """``{"quantize": {"method": "mse"}}`` to ``{"quantize.method": "mse"}``; unknown sections and
    keys refused, with the line that sets them and the nearest known name."""
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{where}: {name} must be a table ([{name}])", f"put its keys under [{name}]")
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        elif isinstance(value, dict) and name not in BY_NAME:
            close = difflib.get_close_matches(name, SECTIONS, n=1, cutoff=0.5)
            hint = f"did you mean [{close[0]}]?" if close else f"the sections are {', '.join(SECTIONS)}"
            raise InputError(f"{where}: unknown recipe section [{name}]", hint)
        else:
            flat[name] = value
    for name in flat:
        line = key_line(text, name, prefix)
        known(name, f"{where}, line {line}" if line else where)
    return flat


def known(name: str, where: str) -> Key:
    """The key named ``name``, or an error that suggests the nearest one."""
    if name in BY_NAME:
        return BY_NAME[name]
    close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else "see `edgetune recipe keys` for the keys"
    raise InputError(f"{where}: unknown recipe key {name}", hint)


def check(name: str, value: Any, where: str, rules: bool = True) -> Any:
    """``value`` if it has the type key ``name`` takes (and, with ``rules``, a value its rule
    allows), else one error naming the key, where it was set and what it takes."""
    key = known(name, where)
    if value is None:
        return None
    if key.kind == "table" and isinstance(value, dict):
        value = dotted(value)
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list) and all(isinstance(item, str) for item in value),
        "table": isinstance(value, dict)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value.values()),
    }[key.kind]
    if not ok:
        wanted = {"str": "a string", "int": "a whole number", "float": "a finite number", "bool": "true or false"}
        wanted |= {"list": "a list of strings", "table": "a table of names to numbers"}
        raise InputError(f"{where}: {name} must be {wanted[key.kind]}, not {value!r}", f"{name}: {key.help}")
    value = float(value) if key.kind == "float" else value
    problem = RULES[name](value) if rules and name in RULES else None
    if problem is not None:
        raise InputError(f"{where}: {name} {problem}", f"{name}: {key.help}")
    return value


def dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A table whose unquoted dotted keys TOML nested (``{ block.conv1 = 0.25 }``) back to
    dotted names (``{"block.conv1": 0.25}``)."""
    flat: dict[str, Any] = {}
    for name, value in table.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--set quantize.ptq_budget=30`` items to keys and values (TOML values; bare words are strings)."""
    changes = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {item!r} is not KEY=VALUE", "e.g. --set quantize.ptq_budget=30")
        name = name.strip()
        known(name, "--set")
        changes[name] = parse_value(text.strip())
    return changes


def _absolute_augment(chain: str) -> str:
    """An augmentation chain with its callables' files, synonym tables and paraphrasers made absolute."""
    items = []
    for item in (part.strip() for part in chain.split(",")):
        name, _, rest = item.partition(":")
        items.append(f"{name}:{_absolute(rest)}" if name in ("synonyms", "paraphrase") and rest else _absolute(item))
    return ",".join(items)


def _absolute(spec: str) -> str:
    """A file path, or the file of ``file.py:name``, made absolute; other specs unchanged."""
    match = re.fullmatch(r"(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_.]*)", spec)
    if match and Path(match["file"]).is_file():
        return f"{os.path.abspath(match['file'])}:{match['name']}"
    if ":" not in spec and Path(spec).exists():
        return os.path.abspath(spec)
    return spec
