"""The compression pipeline in one place: load -> capture -> quantize -> export -> evaluate.

Pruning, fine-tuning and the TFLite writer join this list as their stages land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgetune import report as reports
from edgetune.artifacts import json_bytes, write_files
from edgetune.capture.models import LoadedModel, load_model
from edgetune.data import Dataset, load_dataset
from edgetune.errors import InputError
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.ir.graph import Graph
from edgetune.ir.serialize import graph_to_bytes
from edgetune.progress import Progress, silent
from edgetune.quantize import QuantConfig, calibrate
from edgetune.targets import Target, load_target

HOLDOUT_MAX = 256  # held-out calibration samples used for the report when no --eval data is given
LAYER_SQNR_SAMPLES = 4  # per-layer SQNR runs both models with every activation as an output


@dataclass
class CompressResult:
    report: dict[str, Any]
    paths: dict[str, Path]
    graph: Graph = field(repr=False)


@dataclass
class _Timer:
    stages: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self._start, 4)
        self._start = now


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``1x3x224x224`` (batch first) to the per-sample shape (3, 224, 224)."""
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"input shape {text!r} is not like 1x3x224x224", "give dimensions joined by x, batch first") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise InputError(f"input shape {text!r} needs a batch and at least one positive dimension", "e.g. 1x3x224x224")
    return dims[1:]


def resolve_input_shape(loaded: LoadedModel, explicit: tuple[int, ...] | None, data: Dataset) -> tuple[int, ...]:
    declared = loaded.declared_input_shape()
    shape = explicit or declared or data.sample_shape
    if data.sample_shape != shape:
        raise InputError(
            f"samples of {data.source} have shape {'x'.join(map(str, data.sample_shape))} but the model takes {'x'.join(map(str, shape))}",
            "give data preprocessed to the model's input shape, or fix --input-shape",
        )
    return shape


def capture_model(loaded: LoadedModel, shape: tuple[int, ...]) -> Graph:
    if loaded.kind == "onnx":
        from edgetune.capture.onnx_import import import_onnx

        assert loaded.onnx_path is not None
        return import_onnx(loaded.onnx_path)
    from edgetune.capture import capture

    source: Any = loaded.program if loaded.program is not None else loaded.module
    return capture(source, shape)


def compress(
    model: str | nn.Module,
    calib: str | Dataset,
    out_dir: str | Path,
    *,
    eval_data: str | Dataset | None = None,
    target: str | Target = "host",
    quant: QuantConfig | None = None,
    weights: str | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    recipe: str | None = None,
    progress: Progress = silent,
) -> CompressResult:
    """Quantize ``model`` to int8 with ``calib`` data and write the artifacts to ``out_dir``.

    Writes ``model.onnx`` (int8 QDQ), ``model.fp32.onnx``, ``model.edgetune`` (the quantized
    graph, which later commands reload) and ``report.json``.
    """
    quant = quant or QuantConfig()
    timer = _Timer()
    the_target = target if isinstance(target, Target) else load_target(target)
    loaded = model if isinstance(model, LoadedModel) else _load(model, weights)
    calib_set = calib if isinstance(calib, Dataset) else load_dataset(calib, "calibration", recipe)
    eval_set = eval_data if isinstance(eval_data, Dataset) or eval_data is None else load_dataset(eval_data, "test", recipe)
    explicit = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    shape = resolve_input_shape(loaded, explicit, calib_set)
    if eval_set is not None and eval_set.sample_shape != shape:
        raise InputError(
            f"samples of {eval_set.source} have shape {'x'.join(map(str, eval_set.sample_shape))} but the model takes {'x'.join(map(str, shape))}",
            "give evaluation data preprocessed like the calibration data",
        )
    timer.lap("load")

    graph = capture_model(loaded, shape)
    timer.lap("capture")

    calib_part, holdout = calib_set.split(min(quant.samples, len(calib_set)))
    records = calibrate(graph, calib_part.x, quant, progress)
    timer.lap("calibrate")

    fp32_onnx = write_onnx(graph, quantized=False)
    int8_onnx = write_onnx(graph, quantized=True, unsigned_activations=the_target.unsigned_activations)
    compressed = graph_to_bytes(graph)
    timer.lap("export")

    evaluation, layers = _evaluate(graph, fp32_onnx, int8_onnx, eval_set, holdout, calib_part, the_target, progress)
    timer.lap("evaluate")

    report = reports.compress_report(
        source=loaded.source,
        graph=graph,
        target=the_target,
        quant=quant,
        calibration={"source": calib_set.source, "samples": len(calib_part), "method": quant.method},
        records=records,
        sizes={"fp32_onnx_bytes": len(fp32_onnx), "int8_onnx_bytes": len(int8_onnx), "edgetune_bytes": len(compressed)},
        evaluation=evaluation,
        layers=layers,
        timings=timer.stages,
    )
    out = Path(out_dir)
    paths = write_files(
        out,
        {"model.onnx": int8_onnx, "model.fp32.onnx": fp32_onnx, "model.edgetune": compressed, "report.json": json_bytes(report)},
    )
    return CompressResult(report, paths, graph)


def _load(model: str | nn.Module, weights: str | None) -> LoadedModel:
    if isinstance(model, nn.Module):
        return LoadedModel("module", type(model).__name__, module=model.eval())
    return load_model(model, weights)


def _evaluate(
    graph: Graph,
    fp32_onnx: bytes,
    int8_onnx: bytes,
    eval_set: Dataset | None,
    holdout: Dataset | None,
    calib_part: Dataset,
    target: Target,
    progress: Progress,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    note = "measured on the --eval data"
    data = eval_set
    if data is None and holdout is not None:
        data = holdout.take(HOLDOUT_MAX)
        note = "no --eval data: agreement and SQNR against fp32 on held-out calibration samples (not used for calibration)"
    elif data is None:
        data = calib_part
        note = "no --eval data and no held-out calibration samples: measured on the calibration samples themselves"
    progress(0, 2, "evaluation")
    fp32_out = OnnxRunner(fp32_onnx, spin=False).run(data.x)
    progress(1, 2, "evaluation")
    int8_out = OnnxRunner(int8_onnx, spin=False).run(data.x)
    progress(2, 2, "evaluation")
    evaluation = reports.evaluation_block(data, fp32_out, int8_out, note, target)
    layers = reports.layer_sqnr(graph, data.x[:LAYER_SQNR_SAMPLES])
    return evaluation, layers
