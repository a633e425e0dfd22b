"""report.json: what was done, with which settings, and what it measured."""

from __future__ import annotations

import platform
import sys
from typing import Any

import numpy as np

import edgetune
from edgetune import timing
from edgetune.capture.hf import is_hf_folder
from edgetune.data import Dataset
from edgetune.evaluate.metrics import accuracy, agreement, embedding_agreement, finite_or_none, sqnr_and_cosines, sqnr_db
from edgetune.export.float_ops import float_ops
from edgetune.ir.graph import WEIGHTED_OPS, Graph
from edgetune.ir.stats import graph_summary
from edgetune.pipeline.plan import Run
from edgetune.profile.agent import delegation
from edgetune.quantize import QuantConfig

SCHEMA = "edgetune.report"
VERSION = 1


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "edgetune": edgetune.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "tflite_interpreter": _tflite_interpreter(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def _tflite_interpreter() -> str:
    from edgetune.errors import InputError
    from edgetune.evaluate.tflite_runtime import interpreter_class

    try:
        return interpreter_class()[1]
    except InputError:
        return "none"


def evaluation_block(data: Dataset, fp32_out: np.ndarray, int8_out: np.ndarray, note: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "data": data.source,
        "samples": len(data),
        "note": note,
        "runtime": "onnxruntime",
        "int8_vs_fp32": {
            "top1_agreement": agreement(int8_out, fp32_out),
            "sqnr_db": finite_or_none(sqnr_db(fp32_out, int8_out)),
            "max_abs_diff": float(np.abs(fp32_out - int8_out).max()),
            **embedding_agreement(fp32_out, int8_out),
        },
    }
    if data.y is not None and data.has_classes:
        fp32_acc, int8_acc = accuracy(fp32_out, data.y), accuracy(int8_out, data.y)
        block["fp32_accuracy"] = fp32_acc
        block["int8_accuracy"] = int8_acc
        block["accuracy_drop_pp"] = round(100.0 * (fp32_acc - int8_acc), 4)
    return block


def tflite_block(
    data: Dataset, fp32_out: np.ndarray, onnx_out: np.ndarray, tflite_out: np.ndarray, out_scale: float | None, runner: Any
) -> dict[str, Any]:
    """The TFLite int8 artifact against fp32 and against the ONNX int8 artifact (same parameters)."""
    block: dict[str, Any] = {
        "runtime": runner.runtime,
        "top1_agreement_with_fp32": agreement(tflite_out, fp32_out),
        "sqnr_db": finite_or_none(sqnr_db(fp32_out, tflite_out)),
        "vs_fp32": embedding_agreement(fp32_out, tflite_out),
        "top1_agreement_with_onnx_int8": agreement(tflite_out, onnx_out),
        "max_lsb_vs_onnx_int8": round(float(np.abs(tflite_out - onnx_out).max()) / out_scale, 3) if out_scale else None,
        "max_abs_diff_vs_onnx": float(np.abs(tflite_out - onnx_out).max()),
        "delegation": delegation(runner.interpreter),
    }
    if data.y is not None and data.has_classes:
        block["accuracy"] = accuracy(tflite_out, data.y)
    return block


def int4_onnx_block(data: Dataset, fp32_out: np.ndarray, onnx_out: np.ndarray, int4_out: np.ndarray, out_scale: float) -> dict[str, Any]:
    """The ONNX file with packed INT4 weights against fp32 and against model.onnx (the same
    4-bit values stored as int8, run on ONNX Runtime's integer kernels)."""
    block: dict[str, Any] = {
        "top1_agreement_with_fp32": agreement(int4_out, fp32_out),
        "sqnr_db": finite_or_none(sqnr_db(fp32_out, int4_out)),
        "top1_agreement_with_onnx_int8": agreement(int4_out, onnx_out),
        "max_lsb_vs_onnx_int8": round(float(np.abs(int4_out - onnx_out).max()) / out_scale, 3),
    }
    if data.y is not None and data.has_classes:
        block["accuracy"] = accuracy(int4_out, data.y)
    return block


def layer_sqnr(graph: Graph, samples: np.ndarray) -> list[dict[str, Any]]:
    """SQNR in dB and mean cosine (each sample's values as one vector) of every activation of
    the int8 model against fp32, on a few samples.

    Errors accumulate: a layer's figure includes everything quantized before it.
    """
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.export.onnx.writer import build_onnx

    names = [node.outputs[0] for node in graph.nodes if not graph.tensors[node.outputs[0]].is_integer]
    fp32_model, fp32_names = build_onnx(graph, quantized=False, expose=names)
    int8_model, int8_names = build_onnx(graph, quantized=True, expose=names)
    outputs = {}
    for key, model, exposed in (("fp32", fp32_model, fp32_names), ("int8", int8_model, int8_names)):
        runner = OnnxRunner(model.SerializeToString(), spin=False)
        fetch = sorted(set(exposed.values()) - set(runner.input_names))
        values = dict(zip(fetch, runner.session.run(fetch, runner.feeds(samples))))
        outputs[key] = {name: values[exposed[name]] for name in names}
    layers = []
    producers = graph.producers()
    for name in names:
        db, cosine = sqnr_and_cosines(outputs["fp32"][name], outputs["int8"][name])
        layers.append(
            {
                "tensor": name,
                "layer": producers[name].name,
                "op": producers[name].op,
                "sqnr_db": finite_or_none(round(db, 3)),
                "cosine": finite_or_none(round(float(cosine.mean()), 5)),
            }
        )
    return layers


MODE_SCHEMES = {
    "dynamic-int8": "dynamic int8: weights int8 (depthwise layers float), symmetric {granularity} (zero point 0); each layer's float input quantized to"
    " 8 bits per inference (ONNX: DynamicQuantizeLinear with ConvInteger/MatMulInteger; TFLite: hybrid kernels); activations"
    " float between layers, float bias",
    "float16": "float16 weights and biases, computed in float32 (ONNX: Cast; TFLite: DEQUANTIZE)",
}


def _scheme(quant: QuantConfig) -> str:
    granularity = "per-channel" if quant.per_channel else "per-tensor"
    if not quant.calibrated:
        return MODE_SCHEMES[quant.mode].format(granularity=granularity)
    weights = "int8" if quant.weight_bits == 8 else "4-bit values in [-7, 7] on a searched range (first, last and depthwise layers 8-bit)"
    if quant.layer_bits:
        weights += "; by layer (quantize.layer_bits): " + ", ".join(f"{name} {bits}-bit" for name, bits in quant.layer_bits)
    scheme = f"W{quant.weight_bits if not quant.layer_bits else '4/8'}A8: weights {weights}, symmetric {granularity} (zero point 0), activations int8 asymmetric per-tensor, int32 bias"
    if quant.accuracy_target is not None and quant.fallback == "int16":
        scheme += "; layers the fallback switches: int16 activations (symmetric, zero point 0) and int64 bias"
    elif quant.accuracy_target is not None:
        scheme += "; layers the fallback switches: float"
    if quant.keep_float:
        scheme += f"; kept in float as asked: {', '.join(quant.keep_float)}"
    return scheme


def _four_bit_weights(graph: Graph, artifacts: dict[str, int]) -> dict[str, Any]:
    """Where the 4-bit weights are stored, and what packing them saves."""
    from edgetune.ir.quant import WEIGHT_MAX, levels_of

    layers = [n for n in graph.nodes if n.op in WEIGHTED_OPS and not n.in_float]
    eight = [n.name for n in layers if levels_of(graph.meta, n.inputs[1]) == WEIGHT_MAX]
    sizes = {n.name: int(graph.const(n.inputs[1]).size) for n in layers}
    block: dict[str, Any] = {
        "bits": 4,
        "storage": {"model.onnx": "int8", "model.tflite": "int8"},
        "weights": sum(sizes.values()),
        "eight_bit_layers": eight,
        "four_bit_share": round(sum(v for k, v in sizes.items() if k not in eight) / max(sum(sizes.values()), 1), 4),
        "int8_bytes": sum(sizes.values()),
        "packed_int4_bytes": sum(size if name in eight else -(-size // 2) for name, size in sizes.items()),
    }
    if "model.int4.onnx" in artifacts:
        block["storage"]["model.int4.onnx"] = "int4 (ONNX opset 21, two weights a byte)"
        block["note"] = (
            "model.onnx and model.tflite hold the 4-bit values as int8, so that ONNX Runtime's and TFLite's int8 kernels run"
            " them (their accuracy is a 4-bit deployment's, their size is not); model.int4.onnx holds them packed as INT4 for"
            " runtimes with 4-bit weight kernels (e.g. ONNX Runtime's QNN NPU provider) and for flash budgets: ONNX Runtime's CPU"
            " provider runs it correctly but dequantizes those weights and runs those layers in float at every call, so on a"
            " CPU it is slower than model.onnx and than the fp32 model"
        )
    else:
        block["note"] = (
            "planning mode: both artifacts store the 4-bit weight values as int8, so their accuracy is that of a"
            " 4-bit deployment and their size is not; TFLite's int8 kernels and ONNX Runtime's QDQ int8 kernels run them"
        )
    return block


def _head(graph: Graph) -> dict[str, Any]:
    """The classification head a fine-tune added to an encoder without one (finetune/head.py)."""
    head = graph.meta.get("head")
    return {"head_added": head} if head else {}


def compress_report(run: Run) -> dict[str, Any]:
    """report.json, assembled from the results of the stages that ran (it computes nothing)."""
    from edgetune.pipeline.evaluation import Evaluated
    from edgetune.pipeline.load import Loaded
    from edgetune.pipeline.outputs import Exported
    from edgetune.pipeline.stages import Quantized

    graph, quant, target = run.need_graph(), run.plan.quant, run.target
    exported, evaluated, quantized = run.result(Exported), run.result(Evaluated), run.result(Quantized)
    written = [*exported.written, *run.files, *run.plan.extra_files]
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "command": "finetune" if run.plan.from_compressed else "compress",
        "model": {"source": run.source, "weights": run.plan.weights, **graph_summary(graph), **_head(graph)},
        "target": {"name": target.name, "onnx_activations": "uint8" if target.unsigned_activations else "int8"},
    }
    loaded = run.result(Loaded)
    if loaded is not None:
        document["data"] = loaded.data  # each set's source and size; for text, how it was tokenized
    if run.loaded is not None and run.loaded.kind == "module" and is_hf_folder(run.source):
        document["model"]["note"] = "a Hugging Face model folder: its config.json and safetensors weights, loaded with transformers"
    elif run.loaded is not None and run.loaded.kind == "module" and run.plan.weights is None:
        document["model"]["note"] = (
            "no weights were given: the model has the weights its callable set (trained only if it loads them itself;"
            " --weights FILE loads a state dict)"
        )
    if quantized is not None:
        document["quantization"] = {"config": quant.to_dict(), "scheme": _scheme(quant), **quantized.to_dict()}
        if quant.calibrated and (computed_in_float := float_ops(graph)):
            document["quantization"]["float_ops"] = computed_in_float
        if quant.four_bit:
            document["quantization"]["weights"] = _four_bit_weights(graph, exported.sizes)
    document |= {
        "export": run.plan.export.to_dict(),
        "sizes": _sizes(exported.sizes, exported.gzip_sizes),
        "evaluation": evaluated.evaluation,
        "layers": evaluated.layers,
        "timings_s": {**{r.name: r.seconds for r in run.records}, "total": round(sum(r.seconds for r in run.records), 4)},
        "stages": [r.to_dict() for r in run.records],
        "profile": {"process": timing.process_times(run.started), "stages": [span.to_dict() for span in run.spans]},
        "versions": versions(),
        "artifacts": sorted([*written, "report.json"]),
    }
    named = [("prune", "pruning"), ("sensitivity", "sensitivity"), ("finetune", "finetune"), ("finetune (QAT)", "finetune")]
    named += [("meta-init", "meta_init"), ("adapt", "adapt"), ("adapt (int8)", "adapt")]
    for name, key in named:
        if name in run.results:
            document[key] = run.results[name].to_dict()
    if "finetune" in document and document["finetune"]["config"]["qat"] and quantized is not None:
        document["quantization"]["note"] = "scales were learned by QAT after calibration: the tensors list the calibrated starting ranges"
    if evaluated.recovery is not None:
        document["recovery"] = evaluated.recovery
    return document


def _sizes(artifacts: dict[str, int], gzip_sizes: dict[str, int]) -> dict[str, Any]:
    sizes: dict[str, Any] = {
        **{f"{name}_bytes": size for name, size in artifacts.items()},
        **{f"{name}_gzip_bytes": size for name, size in gzip_sizes.items()},
        "int8_to_fp32": round(artifacts["model.onnx"] / artifacts["model.fp32.onnx"], 4),
    }
    if sizes["int8_to_fp32"] > 1:
        sizes["note"] = (
            "model.onnx is larger than model.fp32.onnx: QDQ ONNX stores, besides the int8 weights, a scale and zero point"
            " per tensor (and per channel) and a QuantizeLinear/DequantizeLinear pair per activation, which on a model this"
            " small outweighs weights four times smaller; model.tflite stores the same parameters without that overhead"
        )
    return sizes
