"""The gate's configuration: ``edgetune.toml``, or ``[tool.edgetune]`` in ``pyproject.toml``.

    [recipe]                      # the compress command's options, by their long names
    model = "edgetune.zoo:digits_cnn"
    calib = "digits"
    eval = "digits:test"
    out = "out/gate"
    prune = "channel:0.5"

    [gate]
    artifacts = ["model.onnx", "model.tflite"]
    repetitions = 9               # latency repetitions per build, each at least
    repetition_seconds = 1.0      # this long
    alpha = 0.002                 # Mann-Whitney U level for a latency regression
    min_slowdown = 0.05           # and its size: max(this, 3 x the measured CV)
    regression_quantile = 0.1     # each repetition's statistic: its 10th-percentile time (0.5: median)
    max_accuracy_regression_pp = 0.5

    [targets.host]                # budgets per target; a target with no device is estimated
    min_accuracy = 0.95
    max_accuracy_drop_pp = 1.0
    max_latency_p50_ms = 5.0

    [targets.raspberry-pi-5]
    device = "ssh://pi@raspberrypi.local"
    max_latency_p90_ms = 20.0

    [targets.raspberry-pi-4]      # an emulated board (edgetune device setup qemu): results only
    device = "qemu:raspberry-pi-4"
    parity_kernels = ["xnnpack", "reference", "optimized"]
    max_parity_lsb = 1
    min_parity_agreement = 0.995

Unknown keys are errors: a misspelt budget would otherwise never fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.resources import read_toml

BUDGETS = {
    "min_accuracy": "accuracy of the int8 ONNX model on the evaluation data (0..1)",
    "max_accuracy_drop_pp": "fp32 minus int8 accuracy, in percentage points",
    "min_sqnr_db": "SQNR of the int8 ONNX output against fp32",
    "min_cosine": "mean cosine of the int8 outputs to fp32, the lower of ONNX and TFLite (embeddings; 0..1)",
    "min_neighbour_agreement": "share of samples whose nearest other sample stays the same in int8, the lower of ONNX and TFLite",
    "min_tflite_onnx_agreement": "top-1 agreement between the TFLite and ONNX int8 artifacts (0..1)",
    "all_ops_delegated": "every TFLite op runs on XNNPACK",
    "max_latency_p50_ms": "median latency",
    "max_latency_p90_ms": "90th-percentile latency",
    "max_peak_memory_mb": "peak RSS for loading and running the model (MiB)",
    "max_artifact_kb": "artifact size (KiB)",
    "max_arena_kb": "planned activation arena of the TFLite model (KiB)",
    "max_flash_kb": "TFLite model size against flash (KiB)",
    "max_parity_lsb": "largest output difference, board against this host, over the kernel paths checked (LSB; qemu: or ssh:// devices)",
    "min_parity_agreement": "lowest top-1 agreement, board against this host, over the kernel paths checked (0..1; qemu: or ssh:// devices)",
}
TARGET_KEYS = {"device", "ssh_config", "threads", "parity_samples", "parity_kernels", *BUDGETS}
GATE_KEYS = {"artifacts", "repetitions", "repetition_seconds", "alpha", "min_slowdown", "regression_quantile", "max_accuracy_regression_pp"}


@dataclass(frozen=True)
class TargetBudgets:
    name: str
    budgets: dict[str, Any]
    device: str | None = None
    threads: int | None = None
    parity_samples: int = 64  # evaluation samples run on an emulated (qemu:) device
    parity_kernels: tuple[str, ...] = ()  # kernel paths checked there (none: all)
    ssh_config: str | None = None  # an ssh config file for an ssh:// device


@dataclass(frozen=True)
class GateConfig:
    recipe: dict[str, Any]
    targets: tuple[TargetBudgets, ...]
    artifacts: tuple[str, ...] = ("model.onnx", "model.tflite")
    repetitions: int = 9
    repetition_seconds: float = 1.0
    alpha: float = 0.002
    min_slowdown: float = 0.05
    regression_quantile: float = 0.1
    max_accuracy_regression_pp: float = 0.5
    source: str = ""
    notes: list[str] = field(default_factory=list)


def find_config(explicit: str | Path | None) -> tuple[Path, dict[str, Any]]:
    if explicit is not None:
        path = Path(explicit)
        raw = read_toml(path, "gate config")
        return path, raw.get("tool", {}).get("edgetune", raw) if path.name == "pyproject.toml" else raw
    for candidate in (Path("edgetune.toml"), Path("pyproject.toml")):
        if candidate.is_file():
            raw = read_toml(candidate, "gate config")
            if candidate.name == "edgetune.toml":
                return candidate, raw
            if "edgetune" in raw.get("tool", {}):
                return candidate, raw["tool"]["edgetune"]
    raise InputError(
        "no edgetune.toml and no [tool.edgetune] in pyproject.toml here", "write one (see edgetune gate --help) or pass --config"
    )


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise InputError(f"{where} has unknown keys: {', '.join(extra)}", f"use {', '.join(sorted(allowed))}")


def parse_target(name: str, raw: Any, where: str) -> TargetBudgets:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: [targets.{name}] is not a table", "give budgets as key = value lines")
    _unknown(set(raw), TARGET_KEYS, f"{where} [targets.{name}]")
    budgets = {k: v for k, v in raw.items() if k in BUDGETS}
    for key, value in budgets.items():
        if key == "all_ops_delegated":
            if not isinstance(value, bool):
                raise InputError(f"{where} [targets.{name}] all_ops_delegated must be true or false", "fix the value")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise InputError(f"{where} [targets.{name}] {key} must be a finite, non-negative number", "fix the value")
    threads = raw.get("threads")
    samples = raw.get("parity_samples", 64)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise InputError(f"{where} [targets.{name}] parity_samples must be a positive integer", "fix the value")
    from edgetune.profile.parity import KERNELS

    kernels = raw.get("parity_kernels", [])
    known = sorted(k for names in KERNELS.values() for k in names)
    if not isinstance(kernels, list) or any(k not in known for k in kernels):
        raise InputError(f"{where} [targets.{name}] parity_kernels must list kernel paths", f"use some of {', '.join(known)}")
    config, device = raw.get("ssh_config"), raw.get("device")
    if not isinstance(config, (str, type(None))) or not isinstance(device, (str, type(None))):
        raise InputError(f"{where} [targets.{name}] device and ssh_config must be strings", "quote them")
    parity = {"max_parity_lsb", "min_parity_agreement"} & set(budgets)
    if parity and not (device or "").startswith(("qemu:", "ssh://")):
        raise InputError(
            f"{where} [targets.{name}] {', '.join(sorted(parity))} needs a board to compare with",
            'set device = "qemu:raspberry-pi-4" (emulated) or "ssh://user@host"',
        )
    return TargetBudgets(name, budgets, device, int(threads) if threads else None, samples, tuple(kernels), config)


def _number(table: dict[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where} [gate] {key} must be a finite number", f"the default is {default}")
    if isinstance(default, int) and value != int(value):
        raise InputError(f"{where} [gate] {key} must be a whole number", f"the default is {default}")
    return float(value)


def load_config(explicit: str | Path | None = None) -> GateConfig:
    path, raw = find_config(explicit)
    where = str(path)
    _unknown(set(raw), {"recipe", "gate", "targets"}, where)
    gate = raw.get("gate", {})
    _unknown(set(gate), GATE_KEYS, f"{where} [gate]")
    targets = tuple(parse_target(name, body, where) for name, body in raw.get("targets", {}).items())
    if not targets:
        raise InputError(f"{where} sets no budgets", "add a [targets.host] table with at least one budget")
    config = GateConfig(
        recipe=dict(raw.get("recipe", {})),
        targets=targets,
        artifacts=tuple(gate.get("artifacts", ("model.onnx", "model.tflite"))),
        repetitions=int(_number(gate, "repetitions", 9, where)),
        repetition_seconds=_number(gate, "repetition_seconds", 1.0, where),
        alpha=_number(gate, "alpha", 0.002, where),
        min_slowdown=_number(gate, "min_slowdown", 0.05, where),
        regression_quantile=_number(gate, "regression_quantile", 0.1, where),
        max_accuracy_regression_pp=_number(gate, "max_accuracy_regression_pp", 0.5, where),
        source=where,
    )
    if config.repetitions < 3 or config.repetition_seconds <= 0:
        raise InputError(f"{where} [gate] needs repetitions >= 3 and repetition_seconds > 0", "the defaults are 9 and 1.0")
    if not 0 < config.regression_quantile <= 0.5:
        raise InputError(f"{where} [gate] regression_quantile must be in (0, 0.5]", "the default is 0.1; 0.5 compares medians")
    floor = 1 / math.comb(2 * config.repetitions, config.repetitions)
    if floor >= config.alpha:
        raise InputError(
            f"{where} [gate]: with {config.repetitions} repetitions the smallest possible Mann-Whitney p is {floor:.3g},"
            f" not below alpha {config.alpha:g}, so no regression could ever be detected",
            "use 9 repetitions (or more), or raise alpha",
        )
    if config.repetitions < 9 or config.repetition_seconds < 1.0:
        config.notes.append(
            f"{config.repetitions} repetitions of {config.repetition_seconds:g} s: below 9 x 1 s, latency regressions are hard to prove"
        )
    bad = [a for a in config.artifacts if a not in ("model.onnx", "model.tflite")]
    if bad:
        raise InputError(f"{where} [gate] artifacts {bad} are not benchmarkable", "use model.onnx and/or model.tflite")
    return config
