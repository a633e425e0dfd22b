"""The evaluation stage: the artifacts run on the real runtimes (ONNX Runtime, the TFLite
interpreter) against the fp32 model, and, after a recovery, the accuracies before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.data import Dataset
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.export.onnx.writer import write_onnx
from edgetune.finetune.head import embeds
from edgetune.ir.graph import Graph
from edgetune.pipeline import report as reports
from edgetune.pipeline.outputs import INT4_ONNX
from edgetune.pipeline.plan import Run
from edgetune.quantize import calibrate
from edgetune.targets import usable_cores
from edgetune.timing import step

HOLDOUT_MAX = 256  # held-out calibration samples used for the report when no --eval data is given
LAYER_SQNR_SAMPLES = 4  # per-layer SQNR runs both models with every activation as an output


@dataclass(frozen=True)
class Evaluated:
    evaluation: dict[str, Any]
    layers: list[dict[str, Any]]  # per-activation SQNR of int8 against fp32
    recovery: dict[str, Any] | None  # accuracies before compression, after it and after recovery

    def to_dict(self) -> dict[str, Any]:
        return {"evaluation": self.evaluation, "layers": self.layers, "recovery": self.recovery}


class Evaluate:
    name = "evaluate"

    def wanted(self, run: Run) -> bool:
        return True

    def __call__(self, run: Run) -> Evaluated:
        data, note = _evaluation_data(run)
        graph = run.need_graph()
        data, note = _without_labels_for_embeddings(graph, data, note)
        evaluation = evaluate_artifacts(graph, run.artifacts, data, note, run)
        calibrated = graph.meta.get("mode", "int8") == "int8"
        with step("per-layer SQNR"):
            layers = reports.layer_sqnr(graph, data.x[:LAYER_SQNR_SAMPLES]) if calibrated else []
        recovery = _recovery_block(run, evaluation) if run.plan.finetune is not None and not run.plan.from_compressed else None
        return Evaluated(evaluation, layers, recovery)


def _evaluation_data(run: Run) -> tuple[Dataset, str]:
    if run.eval_set is not None:
        return run.eval_set, "measured on the --eval data"
    if run.plan.from_compressed:
        assert run.train_set is not None
        return run.train_set.take(HOLDOUT_MAX), "no --eval data: measured on training samples, which flatters the model"
    if run.holdout is not None:
        trained_on = run.plan.finetune is not None and isinstance(run.plan.calib, str) and run.plan.calib == run.plan.train_data
        return run.holdout.take(HOLDOUT_MAX), (
            "no --eval data: agreement and SQNR against fp32 on held-out calibration samples (not used for calibration"
            + (", but the fine-tune trained on them: this flatters the model; give --eval data)" if trained_on else ")")
        )
    assert run.calib_part is not None
    return run.calib_part, "no --eval data and no held-out calibration samples: measured on the calibration samples themselves"


def _without_labels_for_embeddings(graph: Graph, data: Dataset, note: str) -> tuple[Dataset, str]:
    """An embedding's output is no class score: its top-1 against class labels means nothing,
    so the labels are set aside (cosine and neighbour agreement measure it)."""
    if data.y is None or not data.has_classes or not embeds(graph):
        return data, note
    return (
        data.unlabelled(),
        note + "; the model outputs an embedding, so its class labels give no accuracy (a fine-tune on them adds a head)",
    )


def evaluate_artifacts(graph: Graph, artifacts: dict[str, bytes], data: Dataset, note: str, run: Run) -> dict[str, Any]:
    """The report's evaluation block. The TFLite files' smoke runs (child processes) started
    at export; they are waited for before this process loads a TFLite file itself, so that an
    interpreter that aborts takes down the child and becomes an error here."""
    pairs = data if data.pair is not None else None
    data = data.sides()  # similarity pairs: every passage is measured, and the pairs scored after
    steps = 2 + ("model.tflite" in artifacts) + (INT4_ONNX in artifacts)
    run.progress(0, steps, "evaluation")
    with step("ONNX fp32"):
        fp32_out = OnnxRunner(artifacts["model.fp32.onnx"], spin=False).run(data.x)
    run.progress(1, steps, "evaluation")
    with step("ONNX int8"):
        int8_out = OnnxRunner(artifacts["model.onnx"], spin=False).run(data.x)
    run.progress(2, steps, "evaluation")
    evaluation = reports.evaluation_block(data, fp32_out, int8_out, note)
    with step("TFLite smoke runs awaited"):
        for smoke in run.smoke:
            smoke.wait()
    tflite_out = None
    if "model.tflite" in artifacts:
        from edgetune.evaluate.tflite_runtime import TfliteRunner

        with step("TFLite int8"):
            runner = TfliteRunner(artifacts["model.tflite"], threads=usable_cores())
            tflite_out = runner.run(data.x)
        run.progress(3, steps, "evaluation")
        evaluation["tflite"] = reports.tflite_block(data, fp32_out, int8_out, tflite_out, _output_scale(graph), runner)
    reference = None
    if run.teacher is not None:
        with step("vs the original model"):
            reference = OnnxRunner(write_onnx(run.teacher, quantized=False), spin=False).run(data.x)
            evaluation["vs_original"] = _vs_original(reference, fp32_out, int8_out, tflite_out)
    if pairs is not None:
        outputs = {"fp32": fp32_out, "onnx_int8": int8_out, "tflite": tflite_out, "original": reference}
        evaluation["similarity"] = _similarity(pairs, outputs)
    if INT4_ONNX in artifacts:
        int4_out = OnnxRunner(artifacts[INT4_ONNX], spin=False).run(data.x)
        run.progress(steps, steps, "evaluation")
        scale = _output_scale(graph)
        assert scale is not None  # 4-bit weights come with the calibrated int8 mode
        evaluation["onnx_int4"] = reports.int4_onnx_block(data, fp32_out, int8_out, int4_out, scale)
    return evaluation


def _similarity(pairs: Dataset, outputs: dict[str, np.ndarray | None]) -> dict[str, Any]:
    """Each model's embeddings of the pairs' two sides (first sides, then second, as run),
    scored as the fine-tune validated them: Spearman of cosines and scores, or recall at 1."""
    from edgetune.finetune.similarity import scored_outputs

    return {"data": pairs.source, **scored_outputs(outputs, len(pairs), pairs.y)}


def _vs_original(reference: np.ndarray, fp32_out: np.ndarray, int8_out: np.ndarray, tflite_out: np.ndarray | None) -> dict[str, Any]:
    """The artifacts against the model as it was given, before pruning or a fine-tune changed
    it: without labels, the only measure of what those cost (int8 against fp32 compares the
    compressed model with itself)."""
    from edgetune.evaluate.metrics import agreement, cosines, finite_or_none, sqnr_db

    outputs = {"fp32": fp32_out, "onnx_int8": int8_out, **({"tflite": tflite_out} if tflite_out is not None else {})}
    return {
        name: {
            "top1_agreement": agreement(out, reference),
            "sqnr_db": finite_or_none(sqnr_db(reference, out)),
            "cosine_mean": float(cosines(reference, out).mean()),  # for embeddings, where top-1 means nothing
        }
        for name, out in outputs.items()
    }


def _output_scale(graph: Graph) -> float | None:
    """The int8 output's step; None for a mode whose output is float."""
    quant = graph.tensors[graph.outputs[0]].quant
    return float(quant.scale[0]) if quant is not None and graph.meta.get("mode", "int8") == "int8" else None


def _recovery_block(run: Run, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Accuracy before compression (the original in fp32), after compression (int8 without
    recovery) and after recovery (the artifact), on the --eval data."""
    block: dict[str, Any] = {"accuracy_before_compression": None, "accuracy_after_compression": None, "accuracy_after_recovery": None}
    eval_set, teacher, baseline = run.eval_set, run.teacher, run.baseline
    if teacher is None or baseline is None or eval_set is None or eval_set.y is None or not eval_set.has_classes or embeds(teacher):
        block["note"] = "accuracies need labelled --eval data"
        return block
    from edgetune.evaluate.metrics import accuracy

    assert run.calib_part is not None
    calibrate(baseline, run.calib_part.x, run.plan.quant)  # plain calibration: the --ptq techniques are not repeated here
    before = OnnxRunner(write_onnx(teacher, quantized=False), spin=False).run(eval_set.x)
    after = OnnxRunner(write_onnx(baseline, quantized=True), spin=False).run(eval_set.x)
    block.update(
        accuracy_before_compression=accuracy(before, eval_set.y),
        accuracy_after_compression=accuracy(after, eval_set.y),
        accuracy_after_recovery=evaluation.get("int8_accuracy"),
    )
    return block
