"""The compression pipeline in one place: load -> capture -> prune -> quantize -> export -> evaluate.

Export writes ONNX (fp32 and int8 QDQ) and TFLite (int8) from the one quantized graph.
Recovery fine-tunes between pruning and calibration, or after calibration when it is
quantization-aware (QAT).
"""

from __future__ import annotations

import copy
import math
import shutil
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from edgetune import report as reports
from edgetune.artifacts import json_bytes, output_folder, partial_folder, publish_folder
from edgetune.capture.models import LoadedModel, load_model
from edgetune.data import Dataset, load_dataset
from edgetune.data.dataset import Role
from edgetune.errors import InputError
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.export.config import ExportConfig
from edgetune.export.onnx.writer import write_onnx
from edgetune.finetune import FinetuneConfig
from edgetune.finetune import finetune as run_finetune
from edgetune.finetune.distributed import World
from edgetune.ir.graph import Graph
from edgetune.ir.serialize import graph_to_bytes
from edgetune.progress import Progress, silent
from edgetune.prune import PruneConfig
from edgetune.prune import prune as prune_graph
from edgetune.quantize import QuantConfig, calibrate
from edgetune.quantize.ptq import quantize
from edgetune.targets import Target, load_target, usable_cores

CHECKPOINT = "finetune.ckpt"  # beside the output folder while a fine-tune runs; in it after Ctrl-C
HOLDOUT_MAX = 256  # held-out calibration samples used for the report when no --eval data is given
LAYER_SQNR_SAMPLES = 4  # per-layer SQNR runs both models with every activation as an output
INT4_ONNX = "model.int4.onnx"  # with 4-bit weights: the same model, its weights packed as INT4 (opset 21)


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
    preprocess: str | None = None,
    export: ExportConfig | None = None,
    prune: PruneConfig | None = None,
    prune_steps: int = 1,
    finetune: FinetuneConfig | None = None,
    train_data: str | Dataset | None = None,
    resume: bool = False,
    sensitivity: bool = False,
    extra_files: dict[str, bytes] | None = None,
    progress: Progress = silent,
) -> CompressResult:
    """Quantize ``model`` to int8 with ``calib`` data and write the artifacts to ``out_dir``.

    Writes ``model.onnx`` (int8 QDQ) and ``model.fp32.onnx``, ``model.tflite`` (full-integer
    int8), ``model.edgetune`` (the quantized graph, which later commands reload) and
    ``report.json``; with ``sensitivity``, also the per-layer sensitivity in the report and
    ``sensitivity.png`` (when matplotlib is installed).
    """
    quant = quant or QuantConfig()
    export = export or ExportConfig()
    timer = _Timer()
    out = output_folder(out_dir)  # a bad -o fails now, not after the work
    the_target = target if isinstance(target, Target) else load_target(target)
    loaded = model if isinstance(model, LoadedModel) else _load(model, weights)
    calib_set = _data(calib, "calibration", preprocess, progress)
    eval_set = None if eval_data is None else _data(eval_data, "test", preprocess, progress)
    train_set = None if train_data is None else _data(train_data, "train", preprocess, progress)
    _check_recovery_inputs(finetune, train_set, resume)
    explicit = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    shape = resolve_input_shape(loaded, explicit, calib_set)
    _check_shapes(shape, eval_set, train_set if finetune is not None else None)
    timer.lap("load")

    graph = capture_model(loaded, shape)
    # Calibration labels serve only the gradient pruning criteria; training labels only a fine-tune.
    _check_labels(
        graph,
        calibration=calib_set if prune is not None else None,
        evaluation=eval_set,
        training=train_set if finetune is not None else None,
    )
    timer.lap("capture")

    teacher = copy.deepcopy(graph) if finetune is not None else None
    if finetune is not None and prune_steps > 1:
        # The recovery budget is shared: one part after each pruning step, the last after all.
        finetune = replace(finetune, budget=finetune.budget.share(prune_steps))
    pruning = None
    if prune is not None:
        # Gradient criteria read calibration samples (and labels, when the data has them).
        sample_set = calib_set.take(quant.samples)
        recover = None
        if finetune is not None and prune_steps > 1:
            assert train_set is not None
            step_config = replace(finetune, qat=False)  # between pruning steps the graph is not yet calibrated

            def recover(pruned: Graph, step: int) -> None:
                run_finetune(pruned, train_set, step_config, teacher=teacher, progress=progress)

        pruning = prune_graph(graph, prune, sample_set.x, sample_set.y, steps=prune_steps, recover=recover)
    if pruning is not None:
        timer.lap("prune")

    recovery, baseline = None, None
    checkpoint = _checkpoint(out, resume) if finetune is not None else None
    if finetune is not None:
        assert train_set is not None
        if eval_set is not None and eval_set.has_classes:
            baseline = copy.deepcopy(graph)  # the compressed model without recovery, for the report
        if not finetune.qat:
            recovery = run_finetune(graph, train_set, finetune, teacher=teacher, progress=progress, checkpoint=checkpoint, resume=resume)
            timer.lap("finetune")

    graph.meta["data"] = {"source": calib_set.source, "normalization": calib_set.preprocess, "labels": list(calib_set.labels)}
    calib_part, holdout = calib_set.split(min(quant.samples, len(calib_set)))
    records, ptq_report = quantize(graph, calib_part.x, quant, holdout.x if holdout is not None else None, progress)
    timer.lap("calibrate")

    if finetune is not None and finetune.qat:
        assert train_set is not None
        recovery = run_finetune(graph, train_set, finetune, teacher=teacher, progress=progress, checkpoint=checkpoint, resume=resume)
        timer.lap("finetune (QAT)")
    if recovery is not None and recovery["world_size"] > 1 and World.current().rank != 0:
        return CompressResult({}, {}, graph)  # under torchrun only the first process writes

    extra: dict[str, bytes] = {}
    layer_figures = None
    if sensitivity:
        layer_figures, extra = _sensitivity(graph, holdout if holdout is not None else calib_part, loaded.source, progress)
        timer.lap("sensitivity")

    artifacts = export_artifacts(graph, the_target, export)
    smoke = _start_smoke_runs(artifacts)
    names = _names_to_write(export, artifacts)
    timer.lap("export")

    evaluation, layers = _evaluate(graph, artifacts, eval_set, holdout, calib_part, progress, smoke)
    timer.lap("evaluate")

    report = reports.compress_report(
        source=loaded.source,
        graph=graph,
        target=the_target,
        quant=quant,
        calibration={"source": calib_set.source, "samples": len(calib_part), "method": quant.method},
        records=records,
        ptq=ptq_report,
        sensitivity=layer_figures,
        export=export,
        artifacts={name: len(blob) for name, blob in artifacts.items()},
        written=sorted([*names, *(extra_files or {})]),
        evaluation=evaluation,
        layers=layers,
        timings=timer.stages,
        pruning=pruning,
        finetune=recovery,
        recovery=_recovery_block(teacher, baseline, calib_part, eval_set, quant, evaluation) if recovery is not None else None,
        gzip_sizes={name: len(zlib.compress(artifacts[name], 6)) for name in ("model.onnx", "model.tflite") if name in artifacts},
    )
    written = {name: blob for name, blob in artifacts.items() if name in names}
    paths = _publish(out_dir, {**written, **extra, **(extra_files or {}), "report.json": json_bytes(report)}, checkpoint)
    return CompressResult(report, paths, graph)


def _checkpoint(out: Path, resume: bool) -> Path:
    """Where a fine-tune into ``out`` keeps its checkpoint: a hidden sibling folder, so that the
    output folder only ever holds a complete set. ``--resume`` also takes up the checkpoint that
    an interrupted run published (``out/finetune.ckpt``)."""
    checkpoint = partial_folder(out) / CHECKPOINT
    published = out / CHECKPOINT
    if resume and not checkpoint.is_file() and published.is_file():
        checkpoint.parent.mkdir(exist_ok=True)
        shutil.copyfile(published, checkpoint)
    return checkpoint


def _publish(out_dir: str | Path, files: dict[str, bytes], checkpoint: Path | None) -> dict[str, Path]:
    """The output set in one atomic step; an interrupted fine-tune's checkpoint goes with it."""
    if checkpoint is not None and checkpoint.is_file():
        files = {**files, CHECKPOINT: checkpoint.read_bytes()}
    publish_folder(out_dir, files)
    if checkpoint is not None:
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return {name: Path(out_dir) / name for name in files}


def _sensitivity(graph: Graph, data: Dataset, source: str, progress: Progress) -> tuple[dict[str, Any], dict[str, bytes]]:
    from edgetune.quantize.sensitivity import SAMPLES, layer_sensitivity, sensitivity_png

    rows = layer_sensitivity(graph, data.x, progress)
    block: dict[str, Any] = {"samples": min(SAMPLES, len(data)), "data": data.source, "layers": rows, "plot": None}
    try:
        png = sensitivity_png(rows, f"per-layer sensitivity: {source}")
    except InputError:
        block["note"] = "sensitivity.png needs matplotlib: pip install 'edgetune[plots]'"
        return block, {}
    block["plot"] = "sensitivity.png"
    return block, {"sensitivity.png": png}


def _data(spec: str | Dataset, role: Role, recipe: str | None, progress: Progress) -> Dataset:
    return spec if isinstance(spec, Dataset) else load_dataset(spec, role, recipe, progress=progress)


def _check_labels(graph: Graph, **sets: Dataset | None) -> None:
    """Every data set's class labels against the model's output size, before any work."""
    outputs = math.prod(graph.tensors[graph.outputs[0]].shape[1:])
    for role, data in sets.items():
        if data is not None:
            data.check_labels(outputs, role)


def _check_shapes(shape: tuple[int, ...], eval_set: Dataset | None, train_set: Dataset | None) -> None:
    for data, role in ((eval_set, "evaluation"), (train_set, "training")):
        if data is not None and data.sample_shape != shape:
            raise InputError(
                f"{role} samples of {data.source} have shape {'x'.join(map(str, data.sample_shape))} but the model takes {'x'.join(map(str, shape))}",
                f"give {role} data preprocessed like the calibration data",
            )


def _check_recovery_inputs(finetune: FinetuneConfig | None, train_set: Dataset | None, resume: bool) -> None:
    if finetune is not None and train_set is None:
        raise InputError("--finetune needs training data", "pass --train DATA (e.g. digits:train)")
    if resume and finetune is None:
        raise InputError(
            "--resume continues a fine-tune, but there is no --finetune budget", "repeat the interrupted command with --resume"
        )


def export_compressed(
    compressed: str | Path, out_dir: str | Path, *, target: str | Target = "host", export: ExportConfig | None = None
) -> dict[str, Path]:
    """Write artifacts from a saved ``model.edgetune`` (what ``compress`` wrote), without recalibrating."""
    from edgetune.ir.serialize import load_graph

    export = export or ExportConfig()
    output_folder(out_dir)  # a bad -o fails now, not after the work
    the_target = target if isinstance(target, Target) else load_target(target)
    graph = load_graph(Path(compressed))
    if not any(t.quant is not None for t in graph.tensors.values()):
        raise InputError(f"{compressed} holds no quantization parameters", "pass the model.edgetune that edgetune compress wrote")
    artifacts = export_artifacts(graph, the_target, export)
    for run in _start_smoke_runs(artifacts):
        run.wait()
    names = _names_to_write(export, artifacts) - {"model.edgetune"}
    return _publish(out_dir, {name: blob for name, blob in artifacts.items() if name in names}, None)


def _names_to_write(export: ExportConfig, artifacts: dict[str, bytes]) -> set[str]:
    """The artifacts the user asked for, of those built."""
    names = {"model.edgetune"}
    if "onnx" in export.formats:
        names |= {"model.onnx", "model.fp32.onnx", INT4_ONNX}
    if "tflite" in export.formats:
        names.add("model.tflite")
        if export.float_tflite:
            names.add("model.fp32.tflite")
    return names & artifacts.keys()


def _start_smoke_runs(artifacts: dict[str, bytes]) -> list[Any]:
    """Each TFLite file loaded and run once in a child process, alongside the evaluation."""
    from edgetune.evaluate.tflite_runtime import SmokeRun

    return [SmokeRun(blob, name) for name, blob in artifacts.items() if name.endswith(".tflite")]


def export_artifacts(graph: Graph, target: Target, export: ExportConfig) -> dict[str, bytes]:
    """Every artifact from the one quantized graph. The ONNX pair is always built (the
    evaluation runs it); TFLite files when asked for."""
    artifacts = {
        "model.onnx": write_onnx(graph, quantized=True, unsigned_activations=target.unsigned_activations),
        "model.fp32.onnx": write_onnx(graph, quantized=False),
        "model.edgetune": graph_to_bytes(graph),
    }
    if graph.meta.get("weight_bits") == 4 and "onnx" in export.formats:
        artifacts[INT4_ONNX] = write_onnx(graph, quantized=True, unsigned_activations=target.unsigned_activations, int4_weights=True)
    if "tflite" in export.formats:
        from edgetune.export.tflite import write_tflite

        info = dict(graph.meta.get("data", {}))
        artifacts["model.tflite"] = write_tflite(graph, quantized=True, int8_io=export.int8_io(target.device_class), metadata=info)
        if export.float_tflite:
            artifacts["model.fp32.tflite"] = write_tflite(graph, quantized=False, metadata=info)
    return artifacts


def _load(model: str | nn.Module, weights: str | None) -> LoadedModel:
    if isinstance(model, nn.Module):
        return LoadedModel("module", type(model).__name__, module=model.eval())
    return load_model(model, weights)


def _evaluate(
    graph: Graph,
    artifacts: dict[str, bytes],
    eval_set: Dataset | None,
    holdout: Dataset | None,
    calib_part: Dataset,
    progress: Progress,
    smoke: list[Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The report's evaluation block. The TFLite files' smoke runs (child processes) started
    before; they are waited for before this process loads a TFLite file itself, so that an
    interpreter that aborts takes down the child and becomes an error here."""
    note = "measured on the --eval data"
    data = eval_set
    if data is None and holdout is not None:
        data = holdout.take(HOLDOUT_MAX)
        note = "no --eval data: agreement and SQNR against fp32 on held-out calibration samples (not used for calibration)"
    elif data is None:
        data = calib_part
        note = "no --eval data and no held-out calibration samples: measured on the calibration samples themselves"
    steps = 2 + ("model.tflite" in artifacts) + (INT4_ONNX in artifacts)
    progress(0, steps, "evaluation")
    fp32_out = OnnxRunner(artifacts["model.fp32.onnx"], spin=False).run(data.x)
    progress(1, steps, "evaluation")
    int8_out = OnnxRunner(artifacts["model.onnx"], spin=False).run(data.x)
    progress(2, steps, "evaluation")
    evaluation = reports.evaluation_block(data, fp32_out, int8_out, note)
    for run in smoke:
        run.wait()
    if "model.tflite" in artifacts:
        from edgetune.evaluate.tflite_runtime import TfliteRunner

        runner = TfliteRunner(artifacts["model.tflite"], threads=usable_cores())
        tflite_out = runner.run(data.x)
        progress(3, steps, "evaluation")
        scale = float(graph.tensors[graph.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
        evaluation["tflite"] = reports.tflite_block(data, fp32_out, int8_out, tflite_out, scale, runner)
    if INT4_ONNX in artifacts:
        int4_out = OnnxRunner(artifacts[INT4_ONNX], spin=False).run(data.x)
        progress(steps, steps, "evaluation")
        scale = float(graph.tensors[graph.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
        evaluation["onnx_int4"] = reports.int4_onnx_block(data, fp32_out, int8_out, int4_out, scale)
    layers = reports.layer_sqnr(graph, data.x[:LAYER_SQNR_SAMPLES])
    return evaluation, layers


def _recovery_block(
    teacher: Graph | None,
    baseline: Graph | None,
    calib_part: Dataset,
    eval_set: Dataset | None,
    quant: QuantConfig,
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Accuracy before compression (the original in fp32), after compression (int8 without
    recovery) and after recovery (the artifact), on the --eval data."""
    block: dict[str, Any] = {"accuracy_before_compression": None, "accuracy_after_compression": None, "accuracy_after_recovery": None}
    if teacher is None or baseline is None or eval_set is None or not eval_set.has_classes:
        block["note"] = "accuracies need labelled --eval data"
        return block
    from edgetune.evaluate.metrics import accuracy

    calibrate(baseline, calib_part.x, quant)  # plain calibration: the --ptq techniques are not repeated here
    before = OnnxRunner(write_onnx(teacher, quantized=False), spin=False).run(eval_set.x)
    after = OnnxRunner(write_onnx(baseline, quantized=True), spin=False).run(eval_set.x)
    assert eval_set.y is not None
    block.update(
        accuracy_before_compression=accuracy(before, eval_set.y),
        accuracy_after_compression=accuracy(after, eval_set.y),
        accuracy_after_recovery=evaluation.get("int8_accuracy"),
    )
    return block


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
    distil from (optional when the training data has labels)."""
    from edgetune.ir.serialize import load_graph

    export = export or ExportConfig()
    timer = _Timer()
    out = output_folder(out_dir)  # a bad -o fails now, not after the work
    the_target = target if isinstance(target, Target) else load_target(target)
    graph = load_graph(Path(compressed))
    if not any(t.quant is not None for t in graph.tensors.values()):
        raise InputError(f"{compressed} holds no quantization parameters", "pass the model.edgetune that edgetune compress wrote")
    shape = tuple(graph.tensors[graph.inputs[0]].shape[1:])
    train_set = _data(train_data, "train", preprocess, progress)
    eval_set = None if eval_data is None else _data(eval_data, "test", preprocess, progress)
    for data in (train_set, eval_set):
        if data is not None and data.sample_shape != shape:
            raise InputError(
                f"samples of {data.source} have shape {'x'.join(map(str, data.sample_shape))} but the model takes {'x'.join(map(str, shape))}",
                "give data preprocessed like the calibration data",
            )
    _check_labels(graph, training=train_set, evaluation=eval_set)
    teacher_graph = capture_model(_load(teacher, teacher_weights), shape) if teacher is not None else None
    checkpoint = _checkpoint(out, resume)
    timer.lap("load")
    recovery = run_finetune(
        graph,
        train_set,
        replace(finetune, qat=True),
        teacher=teacher_graph,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    timer.lap("finetune (QAT)")
    if recovery["world_size"] > 1 and World.current().rank != 0:
        return CompressResult({}, {}, graph)
    artifacts = export_artifacts(graph, the_target, export)
    smoke = _start_smoke_runs(artifacts)
    timer.lap("export")
    data = eval_set or train_set.take(HOLDOUT_MAX)
    evaluation, _ = _evaluate(graph, artifacts, data, None, data, progress, smoke)
    if eval_set is None:
        evaluation["note"] = "no --eval data: measured on training samples, which flatters the model"
    timer.lap("evaluate")
    names = _names_to_write(export, artifacts)
    report = {
        "schema": reports.SCHEMA,
        "version": reports.VERSION,
        "command": "finetune",
        "model": {"source": str(compressed), **reports.graph_summary(graph)},
        "target": {"name": the_target.name, "onnx_activations": "uint8" if the_target.unsigned_activations else "int8"},
        "finetune": recovery,
        "evaluation": evaluation,
        "sizes": {f"{name}_bytes": len(blob) for name, blob in artifacts.items()},
        "timings_s": {**timer.stages, "total": round(sum(timer.stages.values()), 4)},
        "versions": reports.versions(),
        "artifacts": sorted([*names, "report.json"]),
    }
    written = {name: blob for name, blob in artifacts.items() if name in names}
    paths = _publish(out_dir, {**written, "report.json": json_bytes(report)}, checkpoint)
    return CompressResult(report, paths, graph)
