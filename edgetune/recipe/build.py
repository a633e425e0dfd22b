"""From a recipe's keys to the typed options of each stage, and the run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune import pipeline
from edgetune.data.text import TextSpec
from edgetune.errors import InputError
from edgetune.export.config import ExportConfig
from edgetune.finetune import FinetuneConfig, parse_augment, parse_budget, parse_memory, parse_strategy
from edgetune.pipeline import CompressResult, Plan, parse_input_shape
from edgetune.progress import Progress, silent
from edgetune.prune.config import PruneConfig, parse_prune
from edgetune.quantize import QuantConfig
from edgetune.quantize.config import parse_ptq
from edgetune.recipe.recipe import COMMAND_LINE, FILE_NAME, Recipe
from edgetune.targets import Target, load_target

if TYPE_CHECKING:
    from edgetune.meta.init import FewShotInit


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
        layer_bits=tuple((name, int(bits)) for name, bits in values["quantize.layer_bits"].items()),
        accuracy_target=values["quantize.accuracy_target"],
        fallback=values["quantize.fallback"] or "float",
        keep_float=tuple(values["quantize.keep_float"]),
        mode=values["quantize.mode"],
        stream=values["quantize.stream"],
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
        values["prune.heads"],
    )


def finetune_config(values: Mapping[str, Any]) -> FinetuneConfig | None:
    """The fine-tune's options, or None without a budget (no fine-tune) or when a few-shot
    adaptation from ``finetune.init`` takes its place."""
    if not values["finetune.budget"] or values["finetune.init"]:
        return None
    return FinetuneConfig(
        parse_budget(values["finetune.budget"]),
        lr=values["finetune.lr"],
        lr_decay=values["finetune.lr_decay"],
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
        distill=values["finetune.distill"],
    )


def with_init_settings(recipe: Recipe) -> Recipe:
    """A recipe with ``finetune.init`` given the initialization's inner loop where it sets
    no budget or learning rate of its own, so that the recipe written beside the artifacts
    replays the same adaptation."""
    path = recipe["finetune.init"]
    wanted = {"finetune.lr": "finetune.lr" not in recipe.origins, "finetune.budget": not recipe["finetune.budget"]}
    if not path or not any(wanted.values()):
        return recipe  # nothing to take (a resolved recipe): the run's first stage reads the file
    from edgetune.meta.init import load_init

    with _section(recipe, "finetune"):
        inner = load_init(path).meta["meta_init"]
    given = {"finetune.lr": float(inner["inner_lr"]), "finetune.budget": f"{int(inner['inner_steps'])}steps"}
    return recipe.updated({key: given[key] for key, needed in wanted.items() if needed}, f"finetune.init {path}")


def few_shot_init(recipe: Recipe) -> FewShotInit | None:
    """The few-shot adaptation from ``finetune.init``, or None."""
    values = with_init_settings(recipe).values
    if not values["finetune.init"]:
        return None
    from edgetune.meta.init import few_shot_init as build

    if values["finetune.teacher"]:
        raise InputError("finetune.teacher has no use with finetune.init: adaptation learns new classes", "drop finetune.teacher")
    budget = parse_budget(values["finetune.budget"])
    lr = values["finetune.lr"]
    memory = parse_memory(values["finetune.memory"]) if values["finetune.memory"] else None
    return build(values["finetune.init"], budget, lr, memory, parse_strategy(values["finetune.strategy"]), values["finetune.qat"])


def export_config(values: Mapping[str, Any]) -> ExportConfig:
    return ExportConfig(
        tuple(values["export.formats"]), values["export.tflite_io"], values["export.float_tflite"], values["export.c_array"]
    )


# Plan fields that take a key's value as it is.
PLAN_KEYS = {
    "calib": "data.calib",
    "eval_data": "data.eval",
    "train_data": "data.train",
    "preprocess": "data.preprocess",
    "weights": "model.weights",
    "prune_steps": "prune.steps",
    "teacher": "finetune.teacher",
    "teacher_weights": "finetune.teacher_weights",
    "sensitivity": "quantize.sensitivity",
}


def configs(recipe: Recipe) -> tuple[Target, QuantConfig, PruneConfig | None, FinetuneConfig | None, ExportConfig]:
    """Each stage's options, built (and so checked) from the recipe's keys."""
    target = load_target(recipe["target"])
    with _section(recipe, "quantize"):
        quant = quant_config(recipe.values)
    with _section(recipe, "prune"):
        prune = prune_config(recipe.values, target)
    with _section(recipe, "finetune"):
        finetune = finetune_config(recipe.values)
    with _section(recipe, "export"):
        export = export_config(recipe.values)
    return target, quant, prune, finetune, export


def plan(recipe: Recipe) -> Plan:
    """The typed run the recipe describes: every key built into its stage's options."""
    source = recipe["model.source"]
    if source is None:
        raise InputError("no model.source is given", "pass MODEL, or set model.source in the recipe")
    target, quant, prune, finetune, export = configs(recipe)
    copied: dict[str, Any] = {name: recipe[key] for name, key in PLAN_KEYS.items()}
    if not quant.calibrated:
        trains = finetune is not None or recipe["finetune.init"]
        needs_int8 = {"--qat": trains and recipe["finetune.qat"], "--sensitivity": copied["sensitivity"]}
        for option in (name for name, given in needs_int8.items() if given):
            raise InputError(
                f"{option} works on the calibrated int8 model, not with --mode {quant.mode}", f"drop {option}, or use --mode int8"
            )
    shape = parse_input_shape(recipe["model.input_shape"])
    with _section(recipe, "data"):
        text = text_spec(recipe)
    with _section(recipe, "finetune"):
        init = few_shot_init(recipe)
    return Plan(
        source, input_shape=shape, target=target, quant=quant, prune=prune, finetune=finetune, init=init, export=export, text=text, **copied
    )


def text_spec(recipe: Recipe) -> TextSpec:
    """How the recipe's text data is tokenized; ``data.pairs = "auto"`` encodes a pair's sides
    apart for an embedding task (a bi-encoder), else joined."""
    pairs = recipe["data.pairs"]
    if pairs == "auto":
        pairs = "separate" if recipe["finetune.task"] == "embedding" else "joined"
    return TextSpec(recipe["data.tokenizer"], recipe["data.seq_len"], pairs)


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
    """Run ``recipe`` into ``out_dir``, which also gets the recipe (``recipe.toml``). Paths are
    made absolute first, for the run and the file alike (the artifacts' metadata names the data),
    so that ``edgetune compress --recipe OUT/recipe.toml`` replays it from anywhere."""
    resolved = with_init_settings(recipe.with_absolute_paths())
    the_plan = replace(plan(resolved), resume=resume, extra_files={FILE_NAME: resolved.to_toml().encode()})
    return pipeline.run(the_plan, out_dir, progress)
