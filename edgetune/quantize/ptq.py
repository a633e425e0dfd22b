"""Post-training quantization techniques around calibration, in their one valid order:

    equalize (float graph) -> calibrate -> adaround -> bias-correct

``--ptq best`` measures instead of assuming: the activation-range method (minmax,
percentile, MSE) is chosen, and each step kept, only when it raises the output SQNR of the
int8 ONNX model against fp32 on held-out calibration samples (never the evaluation data).
Equalization is judged by calibrating the graph both with and without it.

The budget covers all of ``best``: its trials (calibrations and held-out checks) cost a
modeled time, and AdaRound gets the rest. Like AdaRound's own, the model counts work, not
seconds on a clock, so the same inputs give the same artifact on any machine.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.select import select
from edgetune.ir.stats import graph_macs
from edgetune.progress import Progress
from edgetune.quantize.adaround import adaround, plan
from edgetune.quantize.bias_correct import correct_biases
from edgetune.quantize.calibrate import CalibrationRecord, calibrate
from edgetune.quantize.config import QuantConfig
from edgetune.quantize.equalize import equalize
from edgetune.quantize.observers import METHODS
from edgetune.quantize.scores import float_outputs, int8_scores
from edgetune.quantize.stream import applies
from edgetune.targets import fit_torch_threads

HELD_OUT = 64  # held-out calibration samples that decide what --ptq best keeps
# --ptq best's trials in calibration passes over the samples: three range methods, an
# equalized calibration and its statistics, bias correction, six held-out checks, and the
# graph copies and ONNX models around them. Measured on EfficientNet-Lite2, a 2-vCPU AVX-512
# machine: about 9 passes' worth (37 s), a pass costing its multiply-accumulates plus a
# per-node overhead (4 s over 128 samples; MobileNetV2 on 8x8 digits: 0.27 s).
TRIAL_PASSES = 9.0
SECONDS_PER_MAC = 5e-11
SECONDS_PER_NODE = 4e-3
STREAM_TRIAL_PASSES = 4.0  # a transformer's two more calibrations (smooth, float) and their checks
AFTER_ADAROUND = 3.0  # of the trial passes: bias correction and the two held-out checks after AdaRound
EQUALIZE_SAMPLES = 128  # the pre-activation ranges that bound equalization under ReLU6: more is safer


def quantize(
    graph: Graph, samples: np.ndarray, config: QuantConfig, held_out: np.ndarray | None = None, progress: Progress | None = None
) -> tuple[list[CalibrationRecord], dict[str, Any]]:
    """Calibrate ``graph`` in place with the techniques ``config.ptq`` asks for; returns the
    calibration records and a report of what each technique did."""
    started = time.perf_counter()
    if not config.calibrated:
        return [], uncalibrated(graph, config)
    fit_torch_threads()
    check_layer_names(graph, config.keep_float, "--keep-float")  # before any work
    steps = set(config.ptq)
    best = "best" in steps
    report: dict[str, Any] = {"requested": list(config.ptq), "applied": [], "budget_s": config.ptq_budget}
    check = held_out if held_out is not None and len(held_out) else samples[-HELD_OUT:]
    check = check[:HELD_OUT]
    if best:
        report["checked_on"] = f"{len(check)} " + (
            "held-out calibration samples" if held_out is not None and len(held_out) else "calibration samples (none were held out)"
        )
    float_graph = copy.deepcopy(graph) if best else None
    judge = _Check(check, float_outputs(graph, check)) if best else None
    if "equalize" in steps:
        report["equalize"] = equalize(graph, samples[:EQUALIZE_SAMPLES]).to_dict()
        report["applied"].append("equalize")
    records = calibrate(graph, samples, config, progress)
    baseline = None
    if float_graph is not None and judge is not None:
        records, baseline = _best_calibration(graph, float_graph, records, samples, config, judge, report, progress)
    if best:
        report["trials_modeled_s"] = round(trial_seconds(graph, len(samples)), 2)
        report["adaround_budget_s"] = round(max(config.ptq_budget - report["trials_modeled_s"], 0.0), 2)
    deadline = _adaround_deadline(started, config.ptq_budget, report) if best else None
    if best and plan(graph, len(samples), report["adaround_budget_s"]).modeled_s > report["adaround_budget_s"]:
        report["adaround"] = {
            "why": f"skipped: the {report['adaround_budget_s']:g} s that best's trials leave of {config.ptq_budget:g} s"
            " do not buy its fewest samples and iterations (raise --ptq-budget)"
        }
    elif best and deadline is not None and time.perf_counter() >= deadline:
        report["adaround"] = {
            "why": f"skipped: best's trials took {time.perf_counter() - started:.1f} s of the {config.ptq_budget:g} s budget"
        }
    elif "adaround" in steps or best:
        candidate = copy.deepcopy(graph) if best else graph
        budget = report["adaround_budget_s"] if best else config.ptq_budget
        result = adaround(candidate, samples, budget, progress, deadline).to_dict()
        baseline = _keep_if_better(graph, candidate, "adaround", result, report, judge, baseline)
    if best and time.perf_counter() >= started + config.ptq_budget:
        report["bias-correct"] = {"why": f"skipped: the {config.ptq_budget:g} s budget was spent"}
    elif "bias-correct" in steps or best:
        candidate = copy.deepcopy(graph) if best else graph
        result = correct_biases(candidate, samples, progress).to_dict()
        baseline = _keep_if_better(graph, candidate, "bias-correct", result, report, judge, baseline)
    if config.accuracy_target is not None:
        report["fallback"] = _fallback(graph, samples, check, config.accuracy_target, config.fallback, progress)
    if config.keep_float:
        report["keep_float"] = keep_float(graph, config.keep_float)
    report["modeled_s"] = round(report.get("trials_modeled_s", 0.0) + report.get("adaround", {}).get("modeled_s", 0.0), 2)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return records, report


def uncalibrated(graph: Graph, config: QuantConfig) -> dict[str, Any]:
    """A mode without calibration: the graph only records it; the writers do the rest."""
    graph.meta["mode"], graph.meta["per_channel"] = config.mode, config.per_channel
    return {"requested": [], "applied": [], "mode": config.mode, "why": f"--mode {config.mode} calibrates nothing", "seconds": 0.0}


def check_layer_names(graph: Graph, names: tuple[str, ...], option: str) -> list[str]:
    """The weighted layers that ``names`` pick (a layer, or a module for the layers inside it);
    a name that picks none is one error that suggests the nearest."""
    return select([node.name for node in graph.nodes if node.op in WEIGHTED_OPS], names, option)


def keep_float(graph: Graph, names: tuple[str, ...]) -> dict[str, Any]:
    """The named layers switched to float in place (weights, bias, and the tensors between them)."""
    from edgetune.quantize.fallback import Precision

    layers = check_layer_names(graph, names, "--keep-float")
    Precision(graph, "float").set(set(layers))
    return {"asked": list(names), "layers": layers, "float_ops": sorted(n.name for n in graph.nodes if n.in_float)}


def trial_seconds(graph: Graph, samples: int) -> float:
    """Modeled seconds of --ptq best's trials on ``samples`` calibration samples."""
    macs = graph_macs(graph)
    passes = TRIAL_PASSES + (STREAM_TRIAL_PASSES if applies(graph) else 0.0)
    return passes * (samples * macs * SECONDS_PER_MAC + len(graph.nodes) * SECONDS_PER_NODE)


def _adaround_deadline(started: float, budget: float, report: dict[str, Any]) -> float:
    """best's clock: AdaRound ends early enough to leave what follows it (bias correction and
    two held-out checks) its modeled time, stretched by how much slower than modeled the trials
    before AdaRound ran. On a machine as fast as the model, or faster, that is the modeled time
    alone; on a busy one the reserve grows with it, so the whole of best holds its budget."""
    after = report["trials_modeled_s"] * AFTER_ADAROUND / TRIAL_PASSES
    before = report["trials_modeled_s"] - after
    slowdown = max(1.0, (time.perf_counter() - started) / before) if before > 0 else 1.0
    return started + budget - after * slowdown


def _best_calibration(
    graph: Graph,
    pristine: Graph,
    records: list[CalibrationRecord],
    samples: np.ndarray,
    config: QuantConfig,
    judge: _Check,
    report: dict[str, Any],
    progress: Progress | None,
) -> tuple[list[CalibrationRecord], float]:
    """--ptq best before rounding: the activation-range method judged end to end (held-out
    output SQNR, not each tensor's local error); for a transformer, the outlier split against
    SmoothQuant before it and the float stream alone (quantize/stream.py); then equalization
    with what was chosen."""
    baseline = judge.sqnr(graph)
    report["held_out_sqnr_db"] = {"calibrated": baseline}
    trials = _Trials(graph, pristine, samples, judge, progress, records, baseline, config)
    by_method = trials.each("method", [m for m in METHODS if m != config.method])
    report["calibration_method"] = {"chosen": trials.config.method, "held_out_sqnr_db": by_method}
    if config.stream == "split" and applies(pristine):  # a transformer: the split, with SmoothQuant first, or neither
        by_stream = trials.each("stream", ["smooth", "float"])
        report["stream"] = {"chosen": trials.config.stream, "held_out_sqnr_db": by_stream}
    records, baseline, config = trials.records, trials.baseline, trials.config
    report["held_out_sqnr_db"]["calibrated"] = baseline
    # Equalization changes the float weights, so its candidate is calibrated anew.
    candidate = copy.deepcopy(pristine)
    result = equalize(candidate, samples[:EQUALIZE_SAMPLES]).to_dict()
    candidate_records = calibrate(candidate, samples, config, progress)
    kept = _keep_if_better(graph, candidate, "equalize", result, report, judge, baseline)
    return (candidate_records if "equalize" in report["applied"] else records), float(baseline if kept is None else kept)


@dataclass
class _Trials:
    """Calibrations of the pristine graph with one setting changed, the best adopted into ``graph``."""

    graph: Graph
    pristine: Graph
    samples: np.ndarray
    judge: _Check
    progress: Progress | None
    records: list[CalibrationRecord]
    baseline: float
    config: QuantConfig

    def each(self, setting: str, values: list[str]) -> dict[str, float]:
        """Held-out SQNR with ``setting`` at its current value and at each of ``values``."""
        scores = {getattr(self.config, setting): self.baseline}
        start = self.config
        for value in values:
            change: dict[str, Any] = {setting: value}
            trial = replace(start, **change)
            candidate = copy.deepcopy(self.pristine)
            records = calibrate(candidate, self.samples, trial, self.progress)
            scores[value] = self.judge.sqnr(candidate)
            if scores[value] > self.baseline:
                _adopt(self.graph, candidate)
                self.records, self.baseline, self.config = records, scores[value], trial
        return scores


def _adopt(graph: Graph, candidate: Graph) -> None:
    graph.tensors, graph.nodes, graph.meta = candidate.tensors, candidate.nodes, candidate.meta


def _fallback(
    graph: Graph, samples: np.ndarray, check: np.ndarray, target: str, precision: str, progress: Progress | None
) -> dict[str, Any]:
    from edgetune.quantize.fallback import AccuracyTarget, choose_fallback
    from edgetune.quantize.sensitivity import layer_sensitivity

    rows = layer_sensitivity(graph, check, progress)
    return choose_fallback(graph, check, AccuracyTarget.parse(target), rows, progress, precision)


def _keep_if_better(
    graph: Graph, candidate: Graph, name: str, result: dict[str, Any], report: dict[str, Any], judge: _Check | None, baseline: float | None
) -> float | None:
    """Adopt ``candidate`` into ``graph`` (in place) when asked for, or when it scores better."""
    report[name] = result
    if judge is None or baseline is None:  # asked for explicitly: always kept
        report["applied"].append(name)
        return None
    score = judge.sqnr(candidate)
    report["held_out_sqnr_db"][name] = score
    if score <= baseline:
        result["why"] = f"dropped: held-out SQNR {score:.2f} dB is not above {baseline:.2f} dB without it"
        return baseline
    report["applied"].append(name)
    _adopt(graph, candidate)
    return score


@dataclass
class _Check:
    """Held-out samples and the original float model's outputs on them (computed once)."""

    x: np.ndarray
    reference: np.ndarray

    def sqnr(self, graph: Graph) -> float:
        return int8_scores(graph, self.x, self.reference)["sqnr_db"]
