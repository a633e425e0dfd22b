"""The little TOML a recipe needs: writing flat sections of scalars, lists and inline tables,
finding the line that sets a key, and reading one value given on the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from edgetune.resources import tomllib

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def value_text(value: Any) -> str:
    """One TOML value. JSON's string escapes are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {value_text(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def dump(values: Mapping[str, Any], sections: Iterable[str]) -> str:
    """Dotted keys (``quantize.method``) as TOML: top-level keys first, then one table per section."""
    lines = [f"{name} = {value_text(value)}" for name, value in values.items() if "." not in name]
    for section in sections:
        inside = {name.split(".", 1)[1]: value for name, value in values.items() if name.startswith(section + ".")}
        if inside:
            lines += ["", f"[{section}]"] + [f"{_key(key)} = {value_text(value)}" for key, value in inside.items()]
    return "\n".join(lines) + "\n"


def key_line(text: str | None, dotted: str, prefix: str = "") -> int | None:
    """The line (from 1) of ``text`` that sets ``dotted`` (``section.key`` or a top-level key),
    in the table ``prefix`` names (``recipe.``: the recipe sits under ``[recipe]``)."""
    if text is None:
        return None
    section, _, key = (prefix + dotted).rpartition(".")
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
        elif current == section and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
            return number
    return None


def parse_value(text: str) -> Any:
    """A value as TOML reads it (``30``, ``true``, ``["a"]``), or the text itself as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
