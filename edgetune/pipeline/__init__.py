"""The compression pipeline: one run of ordered stages over a shared state.

    load -> capture -> prune -> recover -> quantize -> recover (QAT) -> sensitivity -> export -> evaluate

(a run from a meta-initialization takes its weights after capture, and adapts where it would recover)

A :class:`Plan` says what the run does (a recipe builds one; so does the keyword form,
:func:`compress`); :data:`STAGES` lists the stages in their one order, each with a typed result
that the report assembles. Export writes ONNX (fp32 and int8 QDQ) and TFLite (int8) from the one
quantized graph.
"""

from edgetune.numbers import parse_input_shape
from edgetune.pipeline.compress import STAGES, CompressResult, compress, finetune_compressed, run
from edgetune.pipeline.load import capture_model
from edgetune.pipeline.outputs import export_artifacts, export_compressed
from edgetune.pipeline.plan import Plan, Run, Stage, StageResult

__all__ = [
    "STAGES",
    "CompressResult",
    "Plan",
    "Run",
    "Stage",
    "StageResult",
    "capture_model",
    "compress",
    "export_artifacts",
    "export_compressed",
    "finetune_compressed",
    "parse_input_shape",
    "run",
]
