"""Where the bundled data files live: ``calibration/`` and ``targets/``.

In a wheel they are package data under ``edgetune/_data/``; in a source checkout
(editable install) they are the top-level folders of the repository.
"""

from __future__ import annotations

import math
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
    """A TOML file as a dict. TOML has nan and inf; no setting of edgetune's is either, so a file
    that holds one is refused here, naming the key."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist", "check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path} is not valid TOML ({str(exc)[:200]})", "fix the file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path} ({exc.strerror or exc})", "check the path") from None
    bad = _non_finite(document)
    if bad is not None:
        raise InputError(f"{what} file {path} sets {bad} to a value that is not a finite number", "give finite numbers")
    return document


def _non_finite(value: Any, key: str = "") -> str | None:
    """The dotted key of the first NaN or infinite float in a TOML document, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "a value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        found = _non_finite(item, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None


def bundled_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} is missing from this edgetune install")
