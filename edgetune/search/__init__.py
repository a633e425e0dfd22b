"""Search: the recipe that meets a device's budgets best, found by Optuna over recipe keys.

``space.py`` says which keys vary and over what; ``config.py`` reads a recipe file's
``[search]`` table (budgets in the gate's words, objectives, trial and time limits);
``trial.py`` compresses one recipe and checks it as the gate would; ``study.py`` runs the
Optuna study (TPE, or NSGA-II for several objectives) on SQLite or any Optuna storage;
``results.py`` writes the front, the chosen recipe's folder and the plot; ``pruning.py`` stops
hopeless trials on their fine-tune curve; ``netadapt.py`` is ``compress --until``, pruning
tightened one measured cut at a time until a budget is met.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetune.progress import Progress, silent
from edgetune.recipe import Recipe, load
from edgetune.resources import read_toml
from edgetune.search.config import SearchConfig, search_config, with_storage
from edgetune.search.space import Dimension

__all__ = ["Dimension", "SearchConfig", "run", "search_config", "search_table", "until"]


def search_table(path: str | Path) -> dict[str, Any]:
    """A recipe file's ``[search]`` table (empty when it has none)."""
    document = read_toml(Path(path), "recipe")
    table = document.get("search", {})
    return dict(table) if isinstance(table, dict) else {}


def run(
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    resume: bool = False,
    progress: Progress = silent,
    **settings: Any,
) -> dict[str, Any]:
    """Search around ``recipe`` (a Recipe, or a recipe file whose ``[search]`` table gives the
    settings); ``settings`` override them (``trials=20``, ``time="10m"``, ``budgets={...}``,
    ``space={...}``, ``objectives=["quality", "latency"]``). The summary document."""
    from edgetune.search.study import search_loop

    table = search_table(recipe) if not isinstance(recipe, Recipe) else {}
    where = str(recipe) if not isinstance(recipe, Recipe) else "the search settings"
    base = recipe if isinstance(recipe, Recipe) else load(recipe)
    config = with_storage(search_config(base, table, where, **settings), storage, resume)
    return search_loop(base.with_absolute_paths(), config, out_dir, progress)


def until(
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    budgets: dict[str, Any],
    *,
    step: float = 0.1,
    screen: str = "quick",
    device: str | None = None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """Prune ``recipe``'s model step by step until it meets ``budgets`` (the gate's names, e.g.
    ``{"max_latency_p50_ms": 5}``) on the recipe's target; the least-pruned model that meets
    them is written to ``out_dir``. The summary: ``met``, ``steps`` (every candidate cut) and
    ``report`` (the kept model's)."""
    from edgetune.search.netadapt import tighten, until_config

    base = recipe if isinstance(recipe, Recipe) else load(recipe)
    config = until_config(base, budgets, "until", step, device, screen)
    return tighten(base.with_absolute_paths(), config, out_dir, progress)
