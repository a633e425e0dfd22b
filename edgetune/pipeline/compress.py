"""The run: the ordered stages of compression, and the functions that start them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgetune.artifacts import json_bytes, output_folder
from edgetune.data import Dataset
from edgetune.export.config import ExportConfig
from edgetune.finetune import FinetuneConfig
from edgetune.ir.graph import Graph
from edgetune.numbers import parse_input_shape
from edgetune.pipeline.evaluation import Evaluate
from edgetune.pipeline.fewshot import Adapt, Initialize
from edgetune.pipeline.load import Capture, Load
from edgetune.pipeline.outputs import Export, publish
from edgetune.pipeline.plan import Plan, Run, Stage, run_stages
from edgetune.pipeline.report import compress_report
from edgetune.pipeline.stages import Prune, Quantize, Recover, Sensitivity
from edgetune.progress import Progress, silent
from edgetune.prune import PruneConfig
from edgetune.quantize import QuantConfig
from edgetune.targets import Target, fit_torch_threads, load_target

# The stages of a run, in their one order. Each says from the plan whether it runs: a fine-tune
# recovers in float before calibration, or quantization-aware after it; a run that starts from
# a compressed model.edgetune skips capture and calibration. A run from a meta-initialization
# (finetune.init) takes its weights after capture and adapts in the fine-tune's place. A new
# stage goes into this list.
STAGES: tuple[Stage, ...] = (
    Load(),
    Capture(),
    Initialize(),
    Prune(),
    Recover(qat=False),
    Adapt(qat=False),
    Quantize(),
    Recover(qat=True),
    Adapt(qat=True),
    Sensitivity(),
    Export(),
    Evaluate(),
)


@dataclass
class CompressResult:
    report: dict[str, Any]
    paths: dict[str, Path]
    graph: Graph | None = field(repr=False)


def run(plan: Plan, out_dir: str | Path, progress: Progress = silent, stages: tuple[Stage, ...] = STAGES) -> CompressResult:
    """Run ``plan``'s stages and publish ``out_dir`` in one step: the artifacts, ``report.json``
    and the plan's extra files (``recipe.toml``)."""
    out = output_folder(out_dir)  # a bad -o fails now, not after the work
    fit_torch_threads()
    target = plan.target or load_target("host")
    state = run_stages(Run(plan, out, target, progress), stages)
    if state.silent_rank:
        return CompressResult({}, {}, state.graph)  # under torchrun only the first process writes
    report = compress_report(state)
    written = {name: blob for name, blob in state.artifacts.items() if name in report["artifacts"]}
    files = {**written, **state.files, **plan.extra_files, "report.json": json_bytes(report)}
    return CompressResult(report, publish(out_dir, files, state.checkpoint), state.graph)


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
    preprocess: str | None = None,
    export: ExportConfig | None = None,
    prune: PruneConfig | float | None = None,
    prune_steps: int = 1,
    finetune: FinetuneConfig | None = None,
    train_data: str | Dataset | None = None,
    resume: bool = False,
    sensitivity: bool = False,
    extra_files: dict[str, bytes] | None = None,
    progress: Progress = silent,
) -> CompressResult:
    """Quantize ``model`` to int8 with ``calib`` data and write the artifacts to ``out_dir``: the
    keyword form of a :class:`Plan` (a recipe builds one too).

    Writes ``model.onnx`` (int8 QDQ) and ``model.fp32.onnx``, ``model.tflite`` (full-integer
    int8), ``model.edgetune`` (the quantized graph, which later commands reload) and
    ``report.json``; with ``sensitivity``, also the per-layer sensitivity in the report and
    ``sensitivity.png`` (when matplotlib is installed). ``prune`` is a :class:`PruneConfig`, or
    the share of channels to remove.
    """
    if isinstance(prune, (int, float)):
        prune = PruneConfig(float(prune))
    plan = Plan(
        model,
        calib,
        eval_data,
        train_data,
        preprocess,
        weights,
        parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape,
        target if isinstance(target, Target) else load_target(target),
        quant or QuantConfig(),
        prune,
        prune_steps,
        finetune,
        export=export or ExportConfig(),
        sensitivity=sensitivity,
        resume=resume,
        extra_files=dict(extra_files or {}),
    )
    return run(plan, out_dir, progress)


def finetune_compressed(
    compressed: str | Path,
    train_data: str | Dataset,
    out_dir: str | Path,
    finetune: FinetuneConfig,
    *,
    teacher: str | nn.Module | None = None,
    teacher_weights: str | None = None,
    eval_data: str | Dataset | None = None,
    target: str | Target = "host",
    export: ExportConfig | None = None,
    preprocess: str | None = None,
    resume: bool = False,
    progress: Progress = silent,
) -> CompressResult:
    """Recover a model that ``compress`` wrote (``model.edgetune``), quantization-aware: the int8
    graph keeps its quantizer and learns its scales. ``teacher`` is the uncompressed model to
    distil from (optional when the training data has labels). The same stages as compress."""
    plan = Plan(
        str(compressed),
        eval_data=eval_data,
        train_data=train_data,
        preprocess=preprocess,
        target=target if isinstance(target, Target) else load_target(target),
        finetune=finetune,
        teacher=teacher,
        teacher_weights=teacher_weights,
        export=export or ExportConfig(),
        resume=resume,
    )
    return run(plan, out_dir, progress)
