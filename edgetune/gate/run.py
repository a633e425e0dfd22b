"""The gate: run the recipe (or read its report), measure per target, check budgets and the
baseline, and decide.

Latency on a host or board is measured in ``repetitions`` separate runs of at least
``repetition_seconds`` each. Their pooled times give the p50/p90 budgets. The regression test
takes one statistic per repetition: a low quantile of its times (the 10th percentile by
default). Interference from the rest of the machine (a neighbour on the same core, a stolen
vCPU, an interrupt) only ever adds time, so the fastest tenth of a second's inferences
estimates the model's own cost far more steadily than the median does; on this project's
2-vCPU runners the CV of repetition medians reached 14% while the 10th percentile stayed near
1-2% (bench/gate_noise.py --neighbour reproduces such a runner). Chen and Revels, "Robust
benchmarking in noisy environments" (2016), argue the same for the minimum; a quantile keeps one
lucky outlier from deciding. A target without a device gets estimates, and its checks say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.gate.config import GateConfig, TargetBudgets
from edgetune.gate.stats import interference_free, latency_regression
from edgetune.progress import Progress, silent
from edgetune.targets import load_target

BASELINE_SCHEMA = "edgetune.gate.baseline"


@dataclass
class Check:
    target: str
    name: str
    artifact: str | None
    value: Any
    limit: Any
    passed: bool
    kind: str  # measured, estimated, report, planned or baseline
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.artifact})" if self.artifact else self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_recipe(config: GateConfig, progress: Progress = silent) -> Path:
    """Compress, in this process, as the config's ``[recipe]`` says; returns the output folder.

    The table holds recipe keys (``[recipe.quantize]`` ...), or compress's options by their long
    names (the older form: ``model``, ``calib``, ``eval``, ``formats`` ...); ``out`` names the folder."""
    from edgetune.recipe import run

    out = Path(str(config.recipe.get("out", "out/gate")))
    where = f"{config.source} [recipe]"
    recipe = _recipe(config)
    if recipe["model.source"] is None:
        raise InputError(f"{where} needs a model", "or pass --report with an existing report.json")
    run(recipe, out, progress=progress)
    return out


def _recipe(config: GateConfig) -> Any:
    """The config's ``[recipe]`` table as a recipe (recipe keys, or compress's long options)."""
    from edgetune.recipe.recipe import from_table

    return from_table(config.recipe, f"{config.source} [recipe]", prefix="recipe.")


class _Series:
    """One artifact's repetitions on one target."""

    def __init__(self, quantile: float) -> None:
        self.quantile = quantile
        self.medians: list[float] = []
        self.lows: list[float] = []
        self.pooled: list[float] = []
        self.peaks: list[int] = []
        self.last: dict[str, Any] = {}

    def add(self, document: dict[str, Any]) -> None:
        times = document.get("times_ms")  # adb's benchmark_model gives a mean, not the runs
        self.medians.append(float(np.median(times)) if times else float(document["mean_ms"]))
        self.lows.append(float(np.quantile(times, self.quantile)) if times else float(document["mean_ms"]))
        self.pooled += times or []
        if document["memory"]["peak_rss_delta_bytes"] is not None:
            self.peaks.append(document["memory"]["peak_rss_delta_bytes"])
        self.last = document

    def figures(self) -> dict[str, Any]:
        return {
            "kind": "measured",
            "runtime": self.last["runtime"],
            "machine": self.last.get("machine"),
            "threads": self.last["threads"],
            "repetition_medians_ms": self.medians,
            "repetition_statistic": statistic_name(self.quantile) if self.pooled else "mean",
            "repetition_ms": self.lows,
            "p50_ms": float(np.percentile(self.pooled, 50)) if self.pooled else float(np.median(self.medians)),
            "p90_ms": float(np.percentile(self.pooled, 90)) if self.pooled else None,
            "peak_rss_bytes": int(max(self.peaks)) if self.peaks else None,
            "memory_plan": self.last.get("memory_plan"),
        }


# Repetitions may grow to this multiple of the configured number: fewer than half can be set
# aside (``interference_free``), so twice as many always leave enough.
MAX_EXTENSION = 2


def _short(sides: dict[str, tuple[Path, _Series]], wanted: int) -> bool:
    return any(len(interference_free(series.lows)) < wanted for _, series in sides.values())


def statistic_name(quantile: float) -> str:
    return "median" if quantile == 0.5 else f"p{100 * quantile:g}"


def _measure_target(
    budget: TargetBudgets, folder: Path, config: GateConfig, progress: Progress, baseline_folder: Path | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """This build's figures per artifact and, with ``baseline_folder``, the baseline's, measured
    in the same run with the repetitions interleaved (A B B A ...), so that a machine that
    slows down or speeds up during the run moves both sides alike."""
    from edgetune.profile import BenchRequest, bench

    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    microcontroller = budget.name != "host" and load_target(budget.name).device_class == "mcu"
    for artifact in config.artifacts:
        path = folder / artifact
        if not path.is_file():
            raise InputError(f"{path} is missing", "the recipe writes it; check [gate] artifacts and --formats")
        if microcontroller and path.suffix != ".tflite":
            continue  # a microcontroller runs TFLite (Micro) models only: no ONNX figures for it
        devices = (budget.device,) if budget.device else ()
        if budget.device and budget.device.startswith("qemu:"):
            results[artifact] = _parity(budget, path, config, progress)
            continue
        if budget.name != "host" and not devices:
            document = bench(BenchRequest(path, budget.name, threads=budget.threads))[0]
            results[artifact] = {"kind": "estimated", "p50_ms": document["estimate"]["p50_ms"], "memory_plan": document.get("memory_plan")}
            continue
        sides = {"new": (path, _Series(config.regression_quantile))}
        if baseline_folder is not None and (baseline_folder / artifact).is_file():
            sides["baseline"] = (baseline_folder / artifact, _Series(config.regression_quantile))
        label = f"latency {budget.name} {artifact}" + (" and its baseline" if len(sides) > 1 else "")
        # Against a baseline, repetitions go on (up to 2x) until each side has the configured
        # number that no other process disturbed: a neighbour busy for seconds spoils whole ones.
        limit = config.repetitions * (MAX_EXTENSION if len(sides) > 1 else 1)
        index = 0
        while index < config.repetitions or (index < limit and _short(sides, config.repetitions)):
            progress(min(index, config.repetitions - 1), config.repetitions, label)  # "done" only once, at the end
            for side in list(sides) if index % 2 == 0 else list(reversed(sides)):
                where, series = sides[side]
                request = BenchRequest(
                    where,
                    budget.name,
                    devices,
                    budget.threads,
                    runs=5,
                    warmup=5,
                    min_seconds=config.repetition_seconds,
                    ssh_config=Path(budget.ssh_config) if budget.ssh_config else None,
                )
                series.add(bench(request)[0])
            index += 1
        progress(config.repetitions, config.repetitions, label)
        results[artifact] = sides["new"][1].figures()
        if budget.device and {"max_parity_lsb", "min_parity_agreement"} & set(budget.budgets):
            results[artifact]["parity"] = _parity(budget, path, config, progress)["parity"]  # a real board over SSH
        if "baseline" in sides:
            baseline[artifact] = sides["baseline"][1].figures()
    return results, baseline


def measure_briefly(budget: TargetBudgets, path: Path, repetitions: int = 3, seconds: float = 0.3) -> dict[str, Any]:
    """One artifact's figures on one target, without a baseline and in a few short
    repetitions (a search's trial; the gate's own runs are longer): the target's estimate when
    it has no device, else measured on this host or the board."""
    from edgetune.profile import BenchRequest, bench

    if budget.name != "host" and not budget.device:
        document = bench(BenchRequest(path, budget.name, threads=budget.threads))[0]
        return {"kind": "estimated", "p50_ms": document["estimate"]["p50_ms"], "memory_plan": document.get("memory_plan")}
    if budget.device and budget.device.startswith("qemu:"):
        raise InputError(f"{budget.device} is an emulated board: it checks parity, not speed", "search against host or a real board")
    series = _Series(0.5)
    devices = (budget.device,) if budget.device else ()
    ssh_config = Path(budget.ssh_config) if budget.ssh_config else None
    for _ in range(repetitions):
        request = BenchRequest(path, budget.name, devices, budget.threads, runs=5, warmup=5, min_seconds=seconds, ssh_config=ssh_config)
        series.add(bench(request)[0])
    return series.figures()


def _parity(budget: TargetBudgets, path: Path, config: GateConfig, progress: Progress) -> dict[str, Any]:
    """Parity of the artifact on the target's board (emulated, or over SSH) with this host, on
    the recipe's evaluation data (its first ``parity_samples``), or on seeded random inputs
    without one."""
    from edgetune.profile.parity import ParityRequest, input_names, parity, parse_device, public, random_samples

    device = parse_device(budget.device or "")
    progress(0, 1, f"parity {budget.name} {path.name}")
    recipe = _recipe(config)
    if recipe["data.eval"]:
        from edgetune.data import load_dataset
        from edgetune.data.inputs import match_inputs
        from edgetune.recipe.build import text_spec

        text = text_spec(recipe)
        dataset = load_dataset(recipe["data.eval"], "test", recipe["data.preprocess"], text=text)
        names = input_names(path)
        dataset = match_inputs(dataset, names, names, "evaluation")
        samples, source = dataset.x[: budget.parity_samples], f"{dataset.source} (first {budget.parity_samples})"
    else:
        samples, source = random_samples(path, budget.parity_samples)
        source += " (no eval data in the recipe)"
    ssh_config = Path(budget.ssh_config) if budget.ssh_config else None
    document = public(parity(ParityRequest(path, device, samples, source, budget.parity_kernels, ssh_config=ssh_config)))
    progress(1, 1, f"parity {budget.name} {path.name}")
    return {"kind": "emulated", "parity": document}


def measure(
    config: GateConfig, folder: Path, progress: Progress = silent, baseline_folder: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures per target and artifact for this build, and for the baseline's artifacts when
    ``baseline_folder`` holds them (measured in the same run, interleaved)."""
    measured: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    for budget in config.targets:
        measured[budget.name], baseline[budget.name] = _measure_target(budget, folder, config, progress, baseline_folder)
    return measured, baseline


def _lower(*values: float | None) -> float | None:
    """The worse artifact's figure (None when neither has it)."""
    present = [value for value in values if value is not None]
    return min(present) if present else None


def report_checks(budget: TargetBudgets, report: dict[str, Any], folder: Path) -> list[Check]:
    evaluation, checks = report.get("evaluation", {}), []
    tflite = evaluation.get("tflite", {})
    figures = {
        "min_accuracy": evaluation.get("int8_accuracy"),
        "max_accuracy_drop_pp": evaluation.get("accuracy_drop_pp"),
        "min_sqnr_db": evaluation.get("int8_vs_fp32", {}).get("sqnr_db"),
        "min_tflite_onnx_agreement": tflite.get("top1_agreement_with_onnx_int8"),
        "min_cosine": _lower(evaluation.get("int8_vs_fp32", {}).get("cosine_mean"), tflite.get("vs_fp32", {}).get("cosine_mean")),
        "min_neighbour_agreement": _lower(
            evaluation.get("int8_vs_fp32", {}).get("neighbour_agreement"), tflite.get("vs_fp32", {}).get("neighbour_agreement")
        ),
    }
    for name, value in figures.items():
        if name in budget.budgets:
            limit = budget.budgets[name]
            passed = value is not None and (value >= limit if name.startswith("min_") else value <= limit)
            checks.append(
                Check(budget.name, name, None, value, limit, passed, "report", "" if value is not None else "the report has no such figure")
            )
    if budget.budgets.get("all_ops_delegated"):
        delegation = tflite.get("delegation") or {}
        kept = delegation.get("not_delegated", ["(no TFLite artifact)"])
        checks.append(Check(budget.name, "all_ops_delegated", "model.tflite", kept, "all", not kept, "report", ", ".join(kept)))
    if "max_artifact_kb" in budget.budgets:
        for name in ("model.onnx", "model.tflite"):
            if (folder / name).is_file():
                size = (folder / name).stat().st_size / 1024
                limit = budget.budgets["max_artifact_kb"]
                checks.append(Check(budget.name, "max_artifact_kb", name, round(size, 2), limit, size <= limit, "measured"))
    return checks


def _unavailable(target: str, name: str, artifact: str, limit: Any, why: str) -> Check:
    """A budget that cannot be checked fails: otherwise a budget could never fail."""
    return Check(target, name, artifact, None, limit, False, "unavailable", why)


def measurement_checks(budget: TargetBudgets, measured: dict[str, Any]) -> list[Check]:
    checks = []
    for artifact, figures in measured.items():
        kind = figures["kind"]
        worst = (figures.get("parity") or {}).get("worst", {})
        candidates = (
            ("max_latency_p50_ms", figures.get("p50_ms"), 1.0, kind),
            ("max_latency_p90_ms", figures.get("p90_ms"), 1.0, kind),
            ("max_peak_memory_mb", figures.get("peak_rss_bytes"), 2**-20, kind),
            ("max_arena_kb", (figures.get("memory_plan") or {}).get("arena_bytes"), 1 / 1024, "planned"),
            ("max_flash_kb", (figures.get("memory_plan") or {}).get("flash_bytes"), 1 / 1024, "planned"),
            ("max_parity_lsb", worst.get("max_lsb"), 1.0, kind),
            ("min_parity_agreement", worst.get("min_top1_agreement"), 1.0, kind),
        )
        for name, raw, unit, source in candidates:
            if name not in budget.budgets:
                continue
            limit = budget.budgets[name]
            if raw is None:
                checks.append(_unavailable(budget.name, name, artifact, limit, f"no such figure for a {kind} {artifact} on {budget.name}"))
                continue
            value = raw * unit
            passed = value >= limit if name.startswith("min_") else value <= limit
            checks.append(Check(budget.name, name, artifact, round(value, 4), limit, passed, source, _parity_detail(name, figures)))
    return checks


def _parity_detail(name: str, figures: dict[str, Any]) -> str:
    if "parity" not in name:
        return ""
    document = figures["parity"]
    paths = ", ".join(f"{k} {v['max_lsb']} LSB/{100 * v.get('top1_agreement', 1.0):.1f}%" for k, v in document["paths"].items())
    return f"{document['device']} ({document['core']}) on {document['samples']} samples of {document['data']}: {paths}"


def _regression_check(
    config: GateConfig, target: str, artifact: str, figures: dict[str, Any], before: dict[str, Any], interleaved: bool
) -> Check | None:
    """The latency-regression check of one artifact on one target, or None without a baseline."""
    if figures.get("kind") != "measured" or not (before.get("repetition_ms") or before.get("repetition_medians_ms")):
        return None

    def failed(why: str) -> Check:
        return Check(target, "latency_regression", artifact, None, config.alpha, False, "baseline", why)

    if not before.get("repetition_ms") or not figures.get("repetition_ms"):
        return failed("the baseline holds repetition medians only (an older edgetune): refresh it (--update-baseline)")
    keys = ("runtime", "machine", "threads", "repetition_statistic")
    setup = {k: figures.get(k) for k in keys}
    recorded = {k: before.get(k) for k in keys}
    if not interleaved and all(recorded.values()) and setup != recorded:
        changed = ", ".join(k for k in setup if setup[k] != recorded[k])
        return failed(f"the baseline was measured with another {changed}: not comparable; refresh it on this runner (--update-baseline)")
    verdict = latency_regression(before["repetition_ms"], figures["repetition_ms"], config.alpha, config.min_slowdown)
    source = "baseline artifacts re-measured in this run, interleaved" if interleaved else "recorded baseline figures"
    detail = (
        f"{source}: {figures.get('repetition_statistic')} per repetition {100 * verdict.slowdown:+.1f}%"
        f" (threshold {100 * verdict.threshold:.1f}% = max(min_slowdown, 3 x CV {100 * verdict.noise_cv:.1f}%)),"
        f" Mann-Whitney p = {verdict.p_value:.2g} (alpha {config.alpha:g})"
    )
    if any(verdict.set_aside):
        detail += f"; disturbed repetitions set aside: {verdict.set_aside[0]} baseline, {verdict.set_aside[1]} new"
    kept = (len(before["repetition_ms"]) - verdict.set_aside[0], len(figures["repetition_ms"]) - verdict.set_aside[1])
    if 1 / math.comb(sum(kept), kept[0]) >= config.alpha:
        return failed(f"inconclusive: {kept[0]} and {kept[1]} undisturbed repetitions cannot reach alpha {config.alpha:g}; {detail}")
    return Check(target, "latency_regression", artifact, verdict.to_dict(), config.alpha, not verdict.regressed, "baseline", detail)


def _baseline_checks(
    config: GateConfig, report: dict[str, Any], measured: dict[str, Any], baseline: dict[str, Any], same_run: dict[str, Any]
) -> list[Check]:
    checks = []
    for target, artifacts in measured.items():
        for artifact, figures in artifacts.items():
            interleaved = same_run.get(target, {}).get(artifact)
            before = interleaved or baseline.get("measurements", {}).get(target, {}).get(artifact, {})
            check = _regression_check(config, target, artifact, figures, before, bool(interleaved))
            if check is not None:
                checks.append(check)
    old, new = baseline.get("accuracy"), report.get("evaluation", {}).get("int8_accuracy")
    if old is not None and new is not None:
        drop = 100 * (old - new)
        limit = config.max_accuracy_regression_pp
        detail = f"{100 * old:.2f}% -> {100 * new:.2f}%"
        checks.append(Check("all", "accuracy_regression_pp", None, round(drop, 3), limit, drop <= limit, "baseline", detail))
    return checks


def evaluate_gate(
    config: GateConfig,
    report: dict[str, Any],
    folder: Path,
    measured: dict[str, Any],
    baseline: dict[str, Any] | None,
    same_run: dict[str, Any] | None = None,
) -> list[Check]:
    checks: list[Check] = []
    for budget in config.targets:
        checks += report_checks(budget, report, folder)
        checks += measurement_checks(budget, measured.get(budget.name, {}))
    if baseline is not None:
        checks += _baseline_checks(config, report, measured, baseline, same_run or {})
    return checks


def baseline_document(report: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": BASELINE_SCHEMA,
        "version": 1,
        "accuracy": report.get("evaluation", {}).get("int8_accuracy"),
        "model": report.get("model", {}).get("source"),
        "measurements": measured,
    }


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist", "check the path") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path} ({exc.strerror or exc})", "pass the file edgetune wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError(f"{what} {path} is not JSON", "pass the file edgetune wrote") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} is not a JSON object", "pass the file edgetune wrote")
    return data
