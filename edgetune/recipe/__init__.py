"""Recipe: one typed, versioned description of a compression run (TOML), which the CLI and the
API build and every output folder carries (``recipe.toml``) so that the run can be replayed.

``keys.py`` lists every key; ``recipe.py`` checks and merges them; ``build.py`` turns them into
the stages' options and runs the pipeline.
"""

from edgetune.recipe.build import compress_arguments, run
from edgetune.recipe.keys import KEYS, Key
from edgetune.recipe.recipe import FILE_NAME, VERSION, Recipe, load, parse_sets

__all__ = ["FILE_NAME", "KEYS", "VERSION", "Key", "Recipe", "compress_arguments", "load", "parse_sets", "run"]
