"""End-to-end scores of a calibrated graph: its int8 ONNX artifact against the float model,
both run by ONNX Runtime. Post-training choices (--ptq best, the fallback) are judged by these."""

from __future__ import annotations

import numpy as np

from edgetune.ir.graph import Graph


def float_outputs(graph: Graph, x: np.ndarray) -> np.ndarray:
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.export.onnx.writer import write_onnx

    return OnnxRunner(write_onnx(graph, quantized=False), spin=False).run(x)


def int8_scores(graph: Graph, x: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Output SQNR (dB) of the int8 model against ``reference``, and top-1 agreement for classifiers."""
    from edgetune.evaluate.metrics import agreement, sqnr_db
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.export.onnx.writer import write_onnx

    out = OnnxRunner(write_onnx(graph, quantized=True), spin=False).run(x)
    result = {"sqnr_db": round(float(sqnr_db(reference, out)), 3)}
    if reference.ndim == 2 and reference.shape[1] > 1:
        result["agreement"] = round(float(agreement(reference, out)), 4)
    return result
