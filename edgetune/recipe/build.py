"""From a recipe's keys to the typed options of each stage, and the run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.errors import InputError

if TYPE_CHECKING:
    from edgetune.pipeline import CompressResult
from edgetune.export.config import ExportConfig
from edgetune.finetune import FinetuneConfig, parse_augment, parse_budget, parse_memory, parse_strategy
from edgetune.progress import Progress, silent
from edgetune.prune.config import PruneConfig, parse_prune
from edgetune.quantize import QuantConfig
from edgetune.quantize.config import parse_ptq
from edgetune.recipe.recipe import COMMAND_LINE, FILE_NAME, Recipe
from edgetune.targets import Target, load_target


def quant_config(values: Mapping[str, Any]) -> QuantConfig:
    if values["quantize.fallback"] is not None and values["quantize.accuracy_target"] is None:
        raise InputError(
            f"--fallback {values['quantize.fallback']} without --accuracy-target",
            "give the target the fallback should reach, e.g. --accuracy-target 30dB",
        )
    return QuantConfig(
        method=values["quantize.method"],
        per_channel=not values["quantize.per_tensor"],
        samples=values["quantize.samples"],
        percentile=values["quantize.percentile"],
        ptq=parse_ptq(values["quantize.ptq"]),
        ptq_budget=values["quantize.ptq_budget"],
        weight_bits=values["quantize.weight_bits"],
        accuracy_target=values["quantize.accuracy_target"],
        fallback=values["quantize.fallback"] or "float",
    )


def prune_config(values: Mapping[str, Any], target: Target) -> PruneConfig | None:
    if values["prune.method"] is None:
        return None
    return parse_prune(
        values["prune.method"],
        target.channel_multiple,
        values["prune.skip_unsupported"],
        values["prune.allocation"],
        tuple(values["prune.protect"]),
        tuple((name, float(ratio)) for name, ratio in values["prune.layers"].items()),
        values["prune.reestimate_bn"],
    )


def finetune_config(values: Mapping[str, Any]) -> FinetuneConfig | None:
    """The fine-tune's options, or None without a budget (no fine-tune)."""
    if not values["finetune.budget"]:
        return None
    return FinetuneConfig(
        parse_budget(values["finetune.budget"]),
        lr=values["finetune.lr"],
        optimizer=values["finetune.optimizer"],
        label_smoothing=values["finetune.label_smoothing"],
        patience=values["finetune.early_stop"],
        qat=values["finetune.qat"],
        strategy=parse_strategy(values["finetune.strategy"]),
        memory=parse_memory(values["finetune.memory"]) if values["finetune.memory"] else None,
        augment=parse_augment(values["finetune.augment"]),
        task=values["finetune.task"],
        batch_size=values["finetune.batch_size"],
        distill_weight=values["finetune.distill_weight"],
        temperature=values["finetune.temperature"],
        seed=values["finetune.seed"],
        checkpoint_every=values["finetune.checkpoint_every"],
    )


def export_config(values: Mapping[str, Any]) -> ExportConfig:
    return ExportConfig(tuple(values["export.formats"]), values["export.tflite_io"], values["export.float_tflite"])


def compress_arguments(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments of :func:`edgetune.pipeline.compress` that the recipe describes."""
    for name, option in (("model.source", "MODEL"), ("data.calib", "--calib DATA")):
        if recipe[name] is None:
            raise InputError(f"no {name} is given", f"pass {option}, or set {name} in the recipe")
    target = load_target(recipe["target"])
    with _section(recipe, "quantize"):
        quant = quant_config(recipe.values)
    with _section(recipe, "prune"):
        prune = prune_config(recipe.values, target)
    with _section(recipe, "finetune"):
        finetune = finetune_config(recipe.values)
    with _section(recipe, "export"):
        export = export_config(recipe.values)
    return {
        "model": recipe["model.source"],
        "calib": recipe["data.calib"],
        "eval_data": recipe["data.eval"],
        "train_data": recipe["data.train"],
        "preprocess": recipe["data.preprocess"],
        "weights": recipe["model.weights"],
        "input_shape": recipe["model.input_shape"],
        "target": target,
        "quant": quant,
        "prune": prune,
        "prune_steps": recipe["prune.steps"],
        "finetune": finetune,
        "export": export,
        "sensitivity": recipe["quantize.sensitivity"],
    }


@contextmanager
def _section(recipe: Recipe, name: str) -> Iterator[None]:
    """An out-of-range value names the recipe section, and the file or --set it came from
    (values given as command-line options are named by the message itself)."""
    try:
        yield
    except InputError as exc:
        sources = [origin for origin in recipe.set_in(name) if origin != COMMAND_LINE]
        if not sources:
            raise
        raise InputError(f"{', '.join(sources)} [{name}]: {exc.message}", exc.hint) from exc


def run(recipe: Recipe, out_dir: str | Path, *, resume: bool = False, progress: Progress = silent) -> CompressResult:
    """Compress as ``recipe`` says into ``out_dir``, which also gets the recipe (``recipe.toml``).
    Paths are made absolute first, for the run and the file alike (the artifacts' metadata names
    the data), so that ``edgetune compress --recipe OUT/recipe.toml`` replays it from anywhere."""
    from edgetune.pipeline import compress

    resolved = recipe.with_absolute_paths()
    arguments = compress_arguments(resolved)
    return compress(out_dir=out_dir, resume=resume, progress=progress, extra_files={FILE_NAME: resolved.to_toml().encode()}, **arguments)
