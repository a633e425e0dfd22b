"""What each recipe key allows beyond its type: choices, ranges, and the grammar of the keys
that hold a small language (budgets, pruning specs). A value outside them is one error naming
the key, where it was set (file and line, or --set) and what the key takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgetune.errors import InputError

Rule = Callable[[Any], str | None]  # None: allowed; else what is wrong, to follow the key's name


def choice(*options: Any) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(map(str, options))}, not {value!r}"

    return rule


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A number in a range; ``*_open`` leaves the bound itself out."""

    def rule(value: Any) -> str | None:
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not (below or above):
            return None
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        return f"must be in {span}, not {value!r}"

    return rule


def words(*options: str, alone: tuple[str, ...] = ()) -> Rule:
    """A comma-separated list drawn from ``options``; the words in ``alone`` stand by themselves."""

    def rule(value: Any) -> str | None:
        items = list(dict.fromkeys(item.strip() for item in str(value).split(",") if item.strip()))
        unknown = [item for item in items if item not in (*options, *alone)]
        if unknown:
            return f"has {unknown[0]!r}: give {' or '.join(alone) + ', or ' if alone else ''}some of {','.join(options)}"
        if any(item in alone for item in items) and len(items) > 1:
            return f"{value!r} mixes {' or '.join(alone)} with other words: give it alone"
        return None

    return rule


def items(*options: str) -> Rule:
    """A non-empty list of strings drawn from ``options``."""

    def rule(value: Any) -> str | None:
        unknown = [item for item in value if item not in options]
        if unknown or not value:
            return f"must list some of {', '.join(options)}, not {value!r}"
        return None

    return rule


def parsed(parse: Callable[[Any], Any]) -> Rule:
    """The value as its stage's own parser reads it (the parser's error, without its hint)."""

    def rule(value: Any) -> str | None:
        if value == "":
            return None  # the same as unset
        try:
            parse(value)
        except InputError as exc:
            return f"is {value!r}: {exc.message}"
        return None

    return rule


def bit_widths(value: Any) -> str | None:
    bad = [name for name, bits in value.items() if bits not in (4, 8) or isinstance(bits, bool)]
    return f"gives {bad[0]} {value[bad[0]]!r} bits: weights take 4 or 8" if bad else None


def ratios(value: Any) -> str | None:
    bad = [name for name, ratio in value.items() if not 0.0 <= ratio < 1.0]
    return f"gives {bad[0]} the ratio {value[bad[0]]!r}: ratios are in [0, 1)" if bad else None


def _budget(text: str) -> Any:
    from edgetune.finetune.budget import parse_budget

    return parse_budget(text)


def _memory(text: str) -> Any:
    from edgetune.finetune.budget import parse_memory

    return parse_memory(text)


def _strategy(text: str) -> Any:
    from edgetune.finetune.strategy import parse_strategy

    return parse_strategy(text)


def _accuracy_target(text: str) -> Any:
    from edgetune.quantize.fallback import AccuracyTarget

    return AccuracyTarget.parse(text)


def _prune(text: str) -> Any:
    from edgetune.prune.config import parse_prune

    return parse_prune(text)


def _input_shape(text: str) -> Any:
    from edgetune.numbers import parse_input_shape

    return parse_input_shape(text)


RULES: dict[str, Rule] = {
    "model.input_shape": parsed(_input_shape),
    "quantize.method": choice("mse", "percentile", "minmax", "output"),
    "quantize.percentile": number(50, 100, low_open=True),
    "quantize.samples": number(1),
    "quantize.ptq": words("equalize", "adaround", "bias-correct", alone=("best", "none")),
    "quantize.ptq_budget": number(0),
    "quantize.weight_bits": choice(8, 4),
    "quantize.layer_bits": bit_widths,
    "quantize.accuracy_target": parsed(_accuracy_target),
    "quantize.fallback": choice("float", "int16"),
    "quantize.stream": choice("split", "smooth", "float", "off"),
    "quantize.mode": choice("int8", "dynamic-int8", "float16"),
    "prune.method": parsed(_prune),
    "prune.allocation": choice("uniform", "global"),
    "prune.heads": number(0, 1, high_open=True),
    "prune.layers": ratios,
    "prune.steps": number(1),
    "finetune.budget": parsed(_budget),
    "finetune.strategy": parsed(_strategy),
    "finetune.memory": parsed(_memory),
    "finetune.distill": choice("predictions", "intermediate", "tinybert"),
    "finetune.task": choice("auto", "classification", "regression", "embedding"),
    "data.pairs": choice("auto", "joined", "separate"),
    "finetune.batch_size": number(1),
    "finetune.lr": number(0, low_open=True),
    "finetune.lr_decay": number(0, 1, low_open=True),
    "finetune.optimizer": choice("adamw", "adam", "sgd"),
    "finetune.distill_weight": number(0, 1),
    "finetune.temperature": number(0, low_open=True),
    "finetune.label_smoothing": number(0, 1, high_open=True),
    "finetune.early_stop": number(0),
    "finetune.checkpoint_every": number(0, low_open=True),
    "export.formats": items("onnx", "tflite"),
    "export.tflite_io": choice("float", "int8"),
}
