"""Recipe: one typed, versioned description of a compression run (TOML), which the CLI and the
API build and every output folder carries (``recipe.toml``) so that the run can be replayed.

``keys.py`` lists every key and ``rules.py`` what each allows; ``recipe.py`` checks and merges
them; ``build.py`` turns them into a typed :class:`edgetune.pipeline.Plan` and runs it (imported
on first use: reading and checking a recipe does not load torch).
"""

from typing import Any

from edgetune.recipe.keys import KEYS, Key
from edgetune.recipe.recipe import FILE_NAME, VERSION, Recipe, load, parse_sets

__all__ = ["FILE_NAME", "KEYS", "VERSION", "Key", "Recipe", "load", "parse_sets", "plan", "run"]


def __getattr__(name: str) -> Any:
    if name in ("plan", "run"):
        from edgetune.recipe import build

        return getattr(build, name)
    raise AttributeError(f"module 'edgetune.recipe' has no attribute {name!r}")
