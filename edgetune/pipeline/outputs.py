"""The export stage and the output folder: every artifact from the one quantized graph, and the
set published in one atomic step (with a fine-tune's checkpoint beside it while it runs)."""

from __future__ import annotations

import shutil
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.artifacts import output_folder, partial_folder, publish_folder
from edgetune.background import in_background
from edgetune.errors import InputError
from edgetune.export.config import ExportConfig
from edgetune.export.onnx.writer import write_onnx
from edgetune.ir.graph import Graph
from edgetune.ir.serialize import graph_to_bytes
from edgetune.pipeline.plan import Run
from edgetune.quantize.stream import plain
from edgetune.targets import Target, load_target
from edgetune.timing import step

CHECKPOINT = "finetune.ckpt"  # beside the output folder while a fine-tune runs; in it after Ctrl-C
INT4_ONNX = "model.int4.onnx"  # with 4-bit weights: the same model, its weights packed as INT4 (opset 21)


def export_artifacts(graph: Graph, target: Target, export: ExportConfig) -> dict[str, bytes]:
    """Every artifact from the one quantized graph. The ONNX pair is always built (the
    evaluation runs it); TFLite files when asked for."""
    mode = graph.meta.get("mode", "int8")
    if mode != "int8":
        return _uncalibrated_artifacts(graph, target, export, mode)
    artifacts: dict[str, bytes] = {}
    with step("ONNX int8"):
        artifacts["model.onnx"] = write_onnx(graph, quantized=True, unsigned_activations=target.unsigned_activations)
    float_graph = plain(graph)  # the float model as captured: without the int8 model's outlier split
    with step("ONNX fp32"):
        artifacts["model.fp32.onnx"] = write_onnx(float_graph, quantized=False)
    with step("model.edgetune"):
        artifacts["model.edgetune"] = graph_to_bytes(graph)
    if graph.meta.get("weight_bits") == 4 and "onnx" in export.formats:
        artifacts[INT4_ONNX] = write_onnx(graph, quantized=True, unsigned_activations=target.unsigned_activations, int4_weights=True)
    if "tflite" in export.formats:
        from edgetune.export.tflite import write_tflite

        info = dict(graph.meta.get("data", {}))
        with step("TFLite int8"):
            artifacts["model.tflite"] = write_tflite(graph, quantized=True, int8_io=export.int8_io(target.device_class), metadata=info)
        if export.float_tflite:
            artifacts["model.fp32.tflite"] = write_tflite(float_graph, quantized=False, metadata=info)
        if export.c_array:
            artifacts.update(c_array_files(artifacts["model.tflite"], target))
    return artifacts


def _uncalibrated_artifacts(graph: Graph, target: Target, export: ExportConfig, mode: str) -> dict[str, bytes]:
    """``model.onnx`` and ``model.tflite`` in a mode without calibration (float input and
    output), beside the float ``model.fp32.onnx``."""
    import onnx

    from edgetune.export.onnx import modes

    if export.tflite_io == "int8":
        raise InputError(
            f"--tflite-io int8 needs a calibrated input scale, which --mode {mode} has not", "drop --tflite-io, or use --mode int8"
        )
    if export.c_array:
        raise InputError(f"--c-array is for TFLite Micro, which runs neither float16 nor hybrid models (--mode {mode})", "use --mode int8")
    fp32 = write_onnx(graph, quantized=False)
    model = onnx.load_from_string(fp32)
    rewritten = modes.float16_weights(model) if mode == "float16" else modes.dynamic_int8(model, graph.meta.get("per_channel", True))
    artifacts = {"model.onnx": rewritten.SerializeToString(), "model.fp32.onnx": fp32, "model.edgetune": graph_to_bytes(graph)}
    if "tflite" in export.formats:
        from edgetune.export.tflite import write_tflite

        info = dict(graph.meta.get("data", {}))
        artifacts["model.tflite"] = write_tflite(graph, quantized=False, metadata=info, weights=mode)
        if export.float_tflite:
            artifacts["model.fp32.tflite"] = write_tflite(graph, quantized=False, metadata=info)
    return artifacts


def c_array_files(blob: bytes, target: Target) -> dict[str, bytes]:
    """``model_data.cc`` and ``.h`` for the TFLite model, with the arena the memory plan gives it."""
    from edgetune.export.tflite.c_array import c_array
    from edgetune.profile.mcu import memory_plan
    from edgetune.profile.ops import tflite_ops

    return c_array(blob, planned_bytes=memory_plan(tflite_ops(blob), len(blob), target)["arena_bytes"])


def names_to_write(export: ExportConfig, artifacts: dict[str, bytes]) -> set[str]:
    """The artifacts the user asked for, of those built."""
    names = {"model.edgetune"}
    if "onnx" in export.formats:
        names |= {"model.onnx", "model.fp32.onnx", INT4_ONNX}
    if "tflite" in export.formats:
        names.add("model.tflite")
        if export.float_tflite:
            names.add("model.fp32.tflite")
        if export.c_array:
            names |= {"model_data.cc", "model_data.h"}
    return names & artifacts.keys()


def start_smoke_runs(artifacts: dict[str, bytes]) -> list[Any]:
    """Each TFLite file loaded and run once in a child process, alongside the evaluation."""
    from edgetune.evaluate.tflite_runtime import SmokeRun

    return [SmokeRun(blob, name) for name, blob in artifacts.items() if name.endswith(".tflite")]


@dataclass(frozen=True)
class Exported:
    sizes: dict[str, int]  # every artifact built, in bytes
    gzipped: Future[dict[str, int]]  # the int8 artifacts compressed (what a sparse model saves in transit)
    written: tuple[str, ...]  # the artifacts the user asked for

    @property
    def gzip_sizes(self) -> dict[str, int]:
        return self.gzipped.result()

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "gzip_sizes": self.gzip_sizes, "written": list(self.written)}


class Export:
    """ONNX (int8 QDQ and fp32), TFLite (int8) and ``model.edgetune`` from the quantized graph;
    the TFLite files start their smoke runs in child processes."""

    name = "export"

    def wanted(self, run: Run) -> bool:
        return True

    def __call__(self, run: Run) -> Exported:
        run.artifacts = export_artifacts(run.need_graph(), run.target, run.plan.export)
        with step("TFLite smoke runs started"):
            run.smoke = start_smoke_runs(run.artifacts)
        sizes = {name: len(blob) for name, blob in run.artifacts.items()}
        return Exported(sizes, _gzip_sizes_behind(run.artifacts), tuple(sorted(names_to_write(run.plan.export, run.artifacts))))


def _gzip_sizes_behind(artifacts: dict[str, bytes]) -> Future[dict[str, int]]:
    """The int8 artifacts' compressed sizes, computed in a thread while the evaluation runs
    (zlib lets go of the GIL; the report waits for them)."""
    blobs = {name: artifacts[name] for name in ("model.onnx", "model.tflite") if name in artifacts}
    return in_background(lambda: {name: len(zlib.compress(blob, 6)) for name, blob in blobs.items()}, "gzip-sizes")


def checkpoint_path(out: Path, resume: bool) -> Path:
    """Where a fine-tune into ``out`` keeps its checkpoint: a hidden sibling folder, so that the
    output folder only ever holds a complete set. ``--resume`` also takes up the checkpoint that
    an interrupted run published (``out/finetune.ckpt``)."""
    checkpoint = partial_folder(out) / CHECKPOINT
    published = out / CHECKPOINT
    if resume and not checkpoint.is_file() and published.is_file():
        checkpoint.parent.mkdir(exist_ok=True)
        shutil.copyfile(published, checkpoint)
    return checkpoint


def publish(out_dir: str | Path, files: dict[str, bytes], checkpoint: Path | None) -> dict[str, Path]:
    """The output set in one atomic step; an interrupted fine-tune's checkpoint goes with it."""
    if checkpoint is not None and checkpoint.is_file():
        files = {**files, CHECKPOINT: checkpoint.read_bytes()}
    publish_folder(out_dir, files)
    if checkpoint is not None:
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return {name: Path(out_dir) / name for name in files}


def export_compressed(
    compressed: str | Path, out_dir: str | Path, *, target: str | Target = "host", export: ExportConfig | None = None
) -> dict[str, Path]:
    """Write artifacts from a saved ``model.edgetune`` (what ``compress`` wrote), without recalibrating."""
    from edgetune.pipeline.load import load_compressed

    export = export or ExportConfig()
    output_folder(out_dir)  # a bad -o fails now, not after the work
    the_target = target if isinstance(target, Target) else load_target(target)
    graph = load_compressed(compressed)
    artifacts = export_artifacts(graph, the_target, export)
    for run in start_smoke_runs(artifacts):
        run.wait()
    names = names_to_write(export, artifacts) - {"model.edgetune"}
    return publish(out_dir, {name: blob for name, blob in artifacts.items() if name in names}, None)
