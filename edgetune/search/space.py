"""The search space: which recipe keys a search varies, and over what.

Written in a recipe file's ``[search.space]`` table, or given as ``--space KEY=SPEC``:

    [search.space]
    "prune.ratio" = [0.0, 0.7]                           # numbers: a range (whole numbers: ints)
    "quantize.method" = ["mse", "percentile", "minmax"]  # strings: a choice
    "finetune.lr" = { low = 1e-4, high = 1e-2, log = true }

Every name is a recipe key (``edgetune recipe keys``), or one of two that build
``prune.method``: ``prune.ratio`` (the share of channels removed; 0 prunes nothing) and
``prune.criterion`` (l1, l2, taylor or obd), or ``prune.layers.NAME``: the share removed from
the groups of one layer or module (an entry of the ``prune.layers`` table), so that a search
can give each part of the model its own ratio; or ``quantize.layer_bits.NAME``: one layer's or
module's weight bits, 8 or 4 (an entry of the ``quantize.layer_bits`` table: a mixed-precision
search, as HAQ's). ``NAME`` may be ``*``: one key per prunable channel group (named by its first
layer) or per weighted layer of the model, each with the same range (``expand``). Each choice and each end of a range is checked
against the key's rule when the space is read, so a bad space fails before any trial runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgetune.errors import InputError
from edgetune.recipe import Recipe
from edgetune.recipe.recipe import check, known

PRUNE_KEYS = {"prune.ratio": "the share of channels pruning removes (0: none)", "prune.criterion": "l1, l2, taylor or obd"}
CRITERIA = ("l1", "l2", "taylor", "obd")


@dataclass(frozen=True)
class Dimension:
    """One varied key: a float or int range (``log``: sampled on a log scale), or choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    step: float | None = None  # a float range on a grid (prune.ratio: 0.01)

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial picks for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        if self.kind == "choice":
            return " | ".join(str(choice) for choice in self.choices)
        return f"{self.low:g} .. {self.high:g}" + (" (log)" if self.log else "")

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"key": self.key, "choices": list(self.choices)}
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


LAYER_PREFIX = "prune.layers."
BITS_PREFIX = "quantize.layer_bits."
TABLES = {LAYER_PREFIX: "prune.layers", BITS_PREFIX: "quantize.layer_bits"}  # a name per entry of these tables
EVERY = "*"  # TABLE.*: every prunable group's first layer (prune.layers) or every weighted layer (quantize.layer_bits)


def _table_entry(key: str) -> str | None:
    """The table that ``key`` (``TABLE.NAME``) sets one entry of, if any."""
    return next((prefix for prefix in TABLES if key.startswith(prefix)), None)


def _checked_value(key: str, value: Any, where: str) -> Any:
    if key.startswith(BITS_PREFIX):
        if value not in (4, 8) or isinstance(value, bool):
            raise InputError(f"{where}: {key} takes 8 or 4 (weight bits), not {value!r}", "e.g. [8, 4]")
        return int(value)
    if key == "prune.ratio" or key.startswith(LAYER_PREFIX):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise InputError(f"{where}: {key} takes numbers from 0 up to (not including) 1, not {value!r}", "e.g. [0.0, 0.7]")
        return value
    if key == "prune.criterion":
        if value not in CRITERIA:
            raise InputError(f"{where}: prune.criterion {value!r} is not a criterion", f"use {', '.join(CRITERIA)}")
        return value
    return check(key, value, where)


def dimension(key: str, spec: Any, where: str) -> Dimension:
    """One key's range or choices, checked."""
    prefix = _table_entry(key)
    if prefix is not None:
        if not key.removeprefix(prefix):
            example = '"prune.layers.block1" = [0.0, 0.7]' if prefix == LAYER_PREFIX else '"quantize.layer_bits.block1" = [8, 4]'
            raise InputError(f"{where}: {key} names no layer", f"e.g. {example}")
        if prefix == BITS_PREFIX:  # bits are choices, never a range
            if not isinstance(spec, list) or not spec:
                raise InputError(f"{where}: {key} takes a list of bit widths, not {spec!r}", "e.g. [8, 4]")
            return Dimension(key, "choice", choices=tuple(dict.fromkeys(_checked_value(key, value, f"{where}: {key}") for value in spec)))
    elif key not in PRUNE_KEYS:
        known(key, where)
    at = f"{where}: {key}"
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"low", "high", "log"})
        if unknown or "low" not in spec or "high" not in spec:
            raise InputError(
                f"{at} must be {{ low = A, high = B }} (and log = true)", "give a range as [A, B] or { low = A, high = B, log = true }"
            )
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    elif isinstance(spec, list) and len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
        (low, high), log = spec, False
    elif isinstance(spec, list) and spec:
        choices = tuple(dict.fromkeys(_checked_value(key, value, at) for value in spec))
        return Dimension(key, "choice", choices=choices)
    else:
        raise InputError(f"{at} has an empty or unreadable range ({spec!r})", "give [low, high] numbers or a list of choices")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        raise InputError(f"{at}: the range [{low!r}, {high!r}] is empty", "give low < high")
    if log and low <= 0:
        raise InputError(f"{at}: a log range must start above 0, not at {low!r}", "give low > 0, or drop log")
    _checked_value(key, low, at)
    _checked_value(key, high, at)
    if key == "prune.ratio" or key.startswith(LAYER_PREFIX):  # ratios to the hundredth: a grid keeps trials apart
        return Dimension(key, "float", float(low), float(high), step=None if log else 0.01, log=log)
    whole = isinstance(low, int) and isinstance(high, int) and not key.startswith(LAYER_PREFIX) and known(key, at).kind == "int"
    return Dimension(key, "int" if whole else "float", float(low), float(high), log)


def parse_space(table: Mapping[str, Any], where: str) -> tuple[Dimension, ...]:
    if "prune.criterion" in table and "prune.ratio" not in table:
        raise InputError(f"{where}: prune.criterion varies but prune.ratio does not", 'add "prune.ratio" = [0.0, 0.7] to the space')
    return tuple(dimension(key, spec, where) for key, spec in table.items())


def default_space(recipe: Recipe) -> tuple[Dimension, ...]:
    """What a search varies when told nothing: the pruning ratio and criterion, the activation
    range method and the post-training techniques; the fine-tune's learning rate when the
    recipe recovers with a budget."""
    table: dict[str, Any] = {
        "prune.ratio": [0.0, 0.7],
        "prune.criterion": ["l2", "l1"],
        "quantize.method": ["mse", "percentile", "minmax"],
        "quantize.ptq": ["bias-correct", "none", "equalize,bias-correct"],
    }
    if recipe["finetune.budget"]:
        table["finetune.lr"] = {"low": 3e-4, "high": 1e-2, "log": True}
    return parse_space(table, "the default search space")


def apply(recipe: Recipe, params: Mapping[str, Any], where: str) -> Recipe:
    """``recipe`` with a trial's values set; ``prune.ratio`` and ``prune.criterion`` become
    ``prune.method`` (channel pruning; a ratio below 0.005 prunes nothing)."""
    changes = {key: value for key, value in params.items() if key not in PRUNE_KEYS and _table_entry(key) is None}
    layers = {key.removeprefix(LAYER_PREFIX): round(float(value), 2) for key, value in params.items() if key.startswith(LAYER_PREFIX)}
    bits = {key.removeprefix(BITS_PREFIX): int(value) for key, value in params.items() if key.startswith(BITS_PREFIX)}
    if bits:
        changes["quantize.layer_bits"] = {**recipe["quantize.layer_bits"], **bits}
    if "prune.ratio" in params:
        ratio = round(float(params["prune.ratio"]), 2)
        criterion = params.get("prune.criterion", "l2")
        changes["prune.method"] = f"channel:{ratio:g}:{criterion}" if ratio > 0 or layers else None
    elif layers and not recipe["prune.method"]:
        changes["prune.method"] = "channel:0"  # only the named layers' groups are cut
    if layers:
        changes["prune.layers"] = {**recipe["prune.layers"], **layers}
    return recipe.updated(changes, where)


GRID_POINTS = 5  # values per numeric range in a grid search


def has_every(space: tuple[Dimension, ...]) -> bool:
    return any(_table_entry(d.key) is not None and d.key.endswith("." + EVERY) for d in space)


def expand(space: tuple[Dimension, ...], names: Mapping[str, list[str]], where: str) -> tuple[Dimension, ...]:
    """Each ``TABLE.*`` dimension as one dimension per name of ``names[TABLE prefix]``, in the
    model's order; a name the space also gives on its own keeps its own range."""
    given = {d.key for d in space}
    expanded: list[Dimension] = []
    for d in space:
        prefix = _table_entry(d.key)
        if prefix is None or d.key.removeprefix(prefix) != EVERY:
            expanded.append(d)
            continue
        if not names.get(prefix):
            what = "prunable channel group" if prefix == LAYER_PREFIX else "weighted layer"
            raise InputError(f"{where}: {d.key} matches no {what} of the model", f"drop {d.key} from the space")
        expanded += [replace(d, key=prefix + name) for name in names[prefix] if prefix + name not in given]
    return tuple(expanded)


def model_names(recipe: Recipe) -> dict[str, list[str]]:
    """What ``TABLE.*`` stands for in ``recipe``'s model: the first layer of each channel group
    pruning can cut, and every weighted layer (the model is loaded and captured once; the
    capture cache keeps it for the trials)."""
    import tempfile
    from pathlib import Path

    from edgetune.ir.graph import WEIGHTED_OPS
    from edgetune.pipeline.load import Capture, Load
    from edgetune.pipeline.plan import Run, run_stages
    from edgetune.prune.groups import find_groups
    from edgetune.recipe.build import plan
    from edgetune.targets import load_target

    built = plan(recipe)
    with tempfile.TemporaryDirectory() as folder:
        run = run_stages(Run(built, Path(folder) / "out", built.target or load_target("host")), (Load(), Capture()))
    graph = run.need_graph()
    groups = [g.producers[0].name for g in find_groups(graph) if g.producers and not g.blocked and not g.unsupported]
    return {LAYER_PREFIX: groups, BITS_PREFIX: [node.name for node in graph.nodes if node.op in WEIGHTED_OPS]}


def grid_values(dimension: Dimension, points: int = GRID_POINTS) -> list[Any]:
    """The values a grid search tries for one key: every choice, or ``points`` evenly spaced
    values of a range (geometrically, on a log scale; whole numbers without repeats)."""
    if dimension.kind == "choice":
        return list(dimension.choices)
    low, high = dimension.low, dimension.high
    if dimension.log:
        values = [low * (high / low) ** (i / (points - 1)) for i in range(points)]
    else:
        values = [low + (high - low) * i / (points - 1) for i in range(points)]
    if dimension.kind == "int":
        return list(dict.fromkeys(int(round(value)) for value in values))
    if dimension.step is not None:
        return list(dict.fromkeys(round(round(value / dimension.step) * dimension.step, 10) for value in values))
    return [float(f"{value:.6g}") for value in values]


def grid(space: tuple[Dimension, ...]) -> dict[str, list[Any]]:
    return {dimension.key: grid_values(dimension) for dimension in space}


def grid_size(space: tuple[Dimension, ...]) -> int:
    size = 1
    for values in grid(space).values():
        size *= len(values)
    return size
