"""Where the bundled data files live: ``calibration/`` and ``targets/``.

In a wheel they are package data under ``edgetune/_data/``; in a source checkout
(editable install) they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_PACKAGE = Path(__file__).resolve().parent


def resolve_named(name_or_path: str, known: dict[str, Path], what: str) -> Path:
    """A ``.toml`` path as given, or the bundled file of that name."""
    if name_or_path.endswith(".toml"):
        return Path(name_or_path)
    if name_or_path not in known:
        raise InputError(f"unknown {what} {name_or_path!r}", f"use one of {', '.join(known)} or a path to a .toml file")
    return known[name_or_path]


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist", "check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} file {path} is not valid TOML ({exc})", "fix the file") from None


def bundled_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} is missing from this edgetune install")
