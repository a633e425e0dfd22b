"""The compress command's long options as recipe keys: the command line, and the gate's older
``[recipe]`` tables (which name the options), build recipes through this one table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgetune.errors import InputError

# Long option name (dashes as underscores) -> the recipe key it sets.
OPTION_KEYS = {
    "model": "model.source",
    "weights": "model.weights",
    "input_shape": "model.input_shape",
    "calib": "data.calib",
    "eval": "data.eval",
    "train": "data.train",
    "preprocess": "data.preprocess",
    "tokenizer": "data.tokenizer",
    "seq_len": "data.seq_len",
    "target": "target",
    "method": "quantize.method",
    "percentile": "quantize.percentile",
    "per_tensor": "quantize.per_tensor",
    "calib_samples": "quantize.samples",
    "ptq": "quantize.ptq",
    "ptq_budget": "quantize.ptq_budget",
    "weight_bits": "quantize.weight_bits",
    "accuracy_target": "quantize.accuracy_target",
    "fallback": "quantize.fallback",
    "sensitivity": "quantize.sensitivity",
    "keep_float": "quantize.keep_float",
    "stream": "quantize.stream",
    "mode": "quantize.mode",
    "prune": "prune.method",
    "prune_allocation": "prune.allocation",
    "prune_heads": "prune.heads",
    "prune_protect": "prune.protect",
    "prune_layer": "prune.layers",
    "layer_bits": "quantize.layer_bits",
    "prune_steps": "prune.steps",
    "prune_skip_unsupported": "prune.skip_unsupported",
    "prune_bn": "prune.reestimate_bn",
    "finetune": "finetune.budget",
    "qat": "finetune.qat",
    "finetune_strategy": "finetune.strategy",
    "finetune_memory": "finetune.memory",
    "augment": "finetune.augment",
    "task": "finetune.task",
    "pairs": "data.pairs",
    "distill": "finetune.distill",
    "batch_size": "finetune.batch_size",
    "finetune_lr": "finetune.lr",
    "lr_decay": "finetune.lr_decay",
    "finetune_optimizer": "finetune.optimizer",
    "distill_weight": "finetune.distill_weight",
    "temperature": "finetune.temperature",
    "label_smoothing": "finetune.label_smoothing",
    "early_stop": "finetune.early_stop",
    "seed": "finetune.seed",
    "checkpoint_every": "finetune.checkpoint_every",
    "teacher": "finetune.teacher",
    "teacher_weights": "finetune.teacher_weights",
    "formats": "export.formats",
    "tflite_io": "export.tflite_io",
    "float_tflite": "export.float_tflite",
    "c_array": "export.c_array",
}
# click parameter names that differ from their long option's name.
PARAMETER_NAMES = {
    "eval_data": "eval",
    "train_data": "train",
    "finetune_budget": "finetune",
    "patience": "early_stop",
    "strategy": "finetune_strategy",
    "prune_layers": "prune_layer",
}


def _words(value: Any) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` to a list of names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def _value(option: str, value: Any) -> Any:
    """An option's value as its recipe key holds it."""
    from edgetune.prune.config import parse_overrides

    if option == "weight_bits":
        return int(value)
    if option == "formats":
        return [word.lower() for word in _words(value)]
    if option in ("prune_protect", "keep_float"):
        return _words(value)
    if option == "prune_layer":
        return dict(parse_overrides([value] if isinstance(value, str) else list(value)))
    if option == "layer_bits":
        return dict(_bits([value] if isinstance(value, str) else list(value)))
    return value


def _bits(items: list[str]) -> list[tuple[str, int]]:
    """``NAME=BITS`` strings to (name, bits) pairs."""
    pairs = []
    for item in items:
        name, _, value = item.partition("=")
        if value.strip() not in ("4", "8") or not name.strip():
            raise InputError(f"--layer-bits {item!r} is not NAME=4 or NAME=8", "e.g. --layer-bits block2=4")
        pairs.append((name.strip(), int(value)))
    return pairs


def from_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options given by long name or click parameter name (unset ones as None) to recipe keys."""
    keys: dict[str, Any] = {}
    for name, value in options.items():
        option = PARAMETER_NAMES.get(name, name)
        if option in OPTION_KEYS and value is not None:
            try:
                keys[OPTION_KEYS[option]] = _value(option, value)
            except (TypeError, ValueError):
                raise InputError(f"option {option} has a bad value {value!r}", "see edgetune compress --help") from None
    return keys


def is_option_table(table: Mapping[str, Any]) -> bool:
    """Whether a ``[recipe]`` table names compress's options (the older form) rather than recipe keys."""
    return "version" not in table and not any(isinstance(value, dict) for value in table.values())
