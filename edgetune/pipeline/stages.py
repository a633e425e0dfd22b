"""The compressing stages between capture and export: prune, recover (fine-tune), quantize
(calibrate with the post-training techniques) and the optional per-layer sensitivity. Each one
calls its package's entry point and returns a typed result for the report."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from edgetune.errors import InputError
from edgetune.finetune import finetune as run_finetune
from edgetune.finetune.distributed import World
from edgetune.ir.graph import Graph
from edgetune.pipeline.plan import Run
from edgetune.prune import prune as prune_graph
from edgetune.quantize import CalibrationRecord, quantize
from edgetune.quantize.stream import summary as stream_summary


@dataclass(frozen=True)
class Block:
    """A stage's report block as its package wrote it."""

    block: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.block


class Pruned(Block):
    pass


class Recovered(Block):
    @property
    def world_size(self) -> int:
        return int(self.block["world_size"])


class Prune:
    """Channels or weights removed; with several steps, a recovery fine-tune after each but the last."""

    name = "prune"

    def wanted(self, run: Run) -> bool:
        return run.plan.prune is not None

    def __call__(self, run: Run) -> Pruned:
        plan, recovery = run.plan, run.plan.recovery()
        assert plan.prune is not None and run.calib_set is not None
        # Gradient criteria read calibration samples (and labels, when the data has them).
        samples = run.calib_set.take(plan.quant.samples)
        recover = None
        if recovery is not None and plan.prune_steps > 1:
            train, teacher = run.train_set, run.teacher
            assert train is not None
            between = replace(recovery, qat=False)  # between pruning steps the graph is not yet calibrated

            def recover(pruned: Graph, step: int) -> None:
                run_finetune(pruned, train, between, teacher=teacher, progress=run.progress)

        graph = run.need_graph()
        return Pruned(prune_graph(graph, plan.prune, samples.x, samples.y, steps=plan.prune_steps, recover=recover))


class Recover:
    """The fine-tune: in float before calibration, or quantization-aware (QAT) after it."""

    def __init__(self, qat: bool) -> None:
        self.qat = qat
        self.name = "finetune (QAT)" if qat else "finetune"

    def wanted(self, run: Run) -> bool:
        recovery = run.plan.recovery()
        return recovery is not None and recovery.qat == self.qat

    def __call__(self, run: Run) -> Recovered:
        recovery, graph = run.plan.recovery(), run.need_graph()
        assert recovery is not None and run.train_set is not None
        if not self.qat and _labelled_eval(run):
            run.baseline = copy.deepcopy(graph)  # compressed without recovery, for the report
        block = run_finetune(
            graph, run.train_set, recovery, teacher=run.teacher, progress=run.progress, checkpoint=run.checkpoint, resume=run.plan.resume
        )
        result = Recovered(block)
        run.silent_rank = result.world_size > 1 and World.current().rank != 0  # under torchrun only the first process writes
        return result


@dataclass(frozen=True)
class Quantized:
    calibration: dict[str, Any]  # data source, samples and method
    records: list[CalibrationRecord]
    ptq: dict[str, Any]  # what each post-training technique did
    stream: dict[str, Any] | None = None  # a transformer's float stream and outlier split (quantize/stream.py)

    def to_dict(self) -> dict[str, Any]:
        block = {"calibration": self.calibration, "ptq": self.ptq, "tensors": [r.to_dict() for r in self.records]}
        return block | ({"stream": self.stream} if self.stream is not None else {})


class Quantize:
    """Calibration with the post-training techniques, on part of the calibration set; the rest
    is held out for the techniques' checks and the report."""

    name = "calibrate"

    def wanted(self, run: Run) -> bool:
        return not run.plan.from_compressed

    def __call__(self, run: Run) -> Quantized:
        graph, quant, calib = run.need_graph(), run.plan.quant, run.calib_set
        adapted = graph.meta["data"] if graph.meta.get("data", {}).get("adapted") else None
        assert calib is not None
        recovery = run.plan.recovery()
        if recovery is not None and recovery.qat and _labelled_eval(run):
            run.baseline = copy.deepcopy(graph)  # compressed without recovery, for the report (calibrated there)
        graph.meta["data"] = {"source": calib.source, "normalization": calib.preprocess, "labels": list(calib.labels)}
        if adapted:  # a few-shot adaptation named its own classes
            graph.meta["data"] |= {"labels": adapted["labels"], "adapted": True}
        run.calib_part, run.holdout = calib.split(min(quant.samples, len(calib)))
        held_out = run.holdout.x if run.holdout is not None else None
        records, ptq = quantize(graph, run.calib_part.x, quant, held_out, run.progress)
        calibration = {"source": calib.source, "samples": len(run.calib_part), "method": quant.method}
        return Quantized(calibration, records, ptq, stream_summary(graph))


class Sensitivity:
    """Each layer's int8 sensitivity alone, and its plot (``sensitivity.png``) when matplotlib is there."""

    name = "sensitivity"

    def wanted(self, run: Run) -> bool:
        return run.plan.sensitivity and not run.plan.from_compressed

    def __call__(self, run: Run) -> Block:
        from edgetune.quantize.sensitivity import SAMPLES, layer_sensitivity, sensitivity_png

        data = run.holdout if run.holdout is not None else run.calib_part
        assert data is not None
        rows = layer_sensitivity(run.need_graph(), data.x, run.progress)
        block: dict[str, Any] = {"samples": min(SAMPLES, len(data)), "data": data.source, "layers": rows, "plot": None}
        try:
            png = sensitivity_png(rows, f"per-layer sensitivity: {run.source}")
        except InputError:
            block["note"] = "sensitivity.png needs matplotlib: pip install 'edgetune[plots]'"
            return Block(block)
        block["plot"] = "sensitivity.png"
        run.files["sensitivity.png"] = png
        return Block(block)


def _labelled_eval(run: Run) -> bool:
    return run.eval_set is not None and run.eval_set.has_classes
