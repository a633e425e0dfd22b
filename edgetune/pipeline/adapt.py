"""What ``edgetune adapt`` runs: the support set drawn, the model adapted, quantized when it
was float, both artifacts written and evaluated, and the folder published in one step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetune.data import Dataset, load_dataset
from edgetune.data.inputs import match_inputs
from edgetune.data.text import TextSpec
from edgetune.errors import InputError
from edgetune.meta.adapt import AdaptConfig, adapt
from edgetune.meta.episodes import parse_classes
from edgetune.progress import Progress


def draw(data: Dataset, classes: tuple[int, ...] | None, shot: int | None, seed: int) -> tuple[Dataset, np.ndarray]:
    """``data`` kept to ``classes``, ``shot`` examples of each drawn when asked; also the
    indices (into ``data``) of the examples taken."""
    if data.y is None or not data.has_classes:
        raise InputError(f"{data.source} has no class labels", "adaptation needs labelled examples of the new classes")
    keep = np.isin(data.y, classes) if classes is not None else np.ones(len(data.y), bool)
    if classes is not None:
        for c in classes:
            if not (data.y == c).any():
                raise InputError(f"class {c} of --classes has no example in {data.source}", "pick classes that the data holds")
    index = np.flatnonzero(keep)
    if shot is not None:
        rng, picked = np.random.default_rng(seed), []
        for c in sorted(int(c) for c in np.unique(data.y[index])):
            members = index[data.y[index] == c]
            if len(members) < shot:
                raise InputError(f"class {c} of {data.source} has {len(members)} example(s), fewer than --shot {shot}", "lower --shot")
            picked.append(rng.choice(members, size=shot, replace=False))
        index = np.sort(np.concatenate(picked))
    return data.subset(index, f"{data.source} ({len(index)} examples)"), index


def load_graph_for(model: str, weights: str | None, data: Dataset) -> Any:
    """A model as edgetune's graph: a ``model.edgetune`` (compressed, or meta-initialized) as
    it is, anything else captured for the data's samples (values, or token ids)."""
    from edgetune.ir.serialize import is_graph_file, load_graph
    from edgetune.pipeline.load import capture_model, load_any

    if is_graph_file(model):
        if weights is not None:
            from edgetune.errors import InputError

            raise InputError("--weights goes with a Python model callable", f"{model} carries its weights")
        return load_graph(Path(model))
    loaded = load_any(model, weights)
    data = match_inputs(data, *loaded.input_names())
    names = data.inputs if data.stacked else ()
    return capture_model(loaded, loaded.declared_input_shape() or data.sample_shape, "int64" if data.is_indices else "float32", names)


def fit_to(graph: Any, data: Dataset) -> Dataset:
    """``data``'s inputs that the graph takes, in its order (data/inputs.py)."""
    return match_inputs(data, list(graph.inputs), list(graph.inputs))


def run_adapt(model: str, out_dir: Path, options: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from edgetune.finetune import parse_memory

    classes = parse_classes(options["classes"])
    text = TextSpec(options.pop("tokenizer", None), options.pop("seq_len", None) or TextSpec().seq_len)
    full = load_dataset(options["support"], "train", progress=progress, text=text)
    support, taken = draw(full, classes, options["shot"], options["seed"])
    graph = load_graph_for(model, None, support)
    support = fit_to(graph, support)
    memory = parse_memory(options["memory"]) if options["memory"] else None
    config = AdaptConfig(options["steps"], options["lr"], options["seconds"], memory, options["strategy"])
    calibrated = graph.calibrated
    if not calibrated and not options["calib"]:
        raise InputError(
            f"{model} is a float model", "give --calib DATA to quantize it after adapting, or adapt a compressed model.edgetune"
        )
    report: dict[str, Any] = {"model": model, "support": support.source, "adapt": adapt(graph, support, config)}
    if not calibrated:
        from edgetune.quantize import QuantConfig, quantize

        calib = fit_to(graph, load_dataset(options["calib"], "calibration", progress=progress, text=text))
        quantize(graph, calib.x, QuantConfig())
        report["calibration"] = calib.source
    built, files = _artifacts(graph, options)
    if options["eval_data"]:
        same = options["eval_data"] == options["support"]
        report["evaluation"] = _evaluate(
            built, fit_to(graph, load_dataset(options["eval_data"], "test", text=text)), report["adapt"]["classes"], taken if same else None
        )
    from edgetune.artifacts import json_bytes, publish_folder

    report["written"] = sorted([*files, "report.json"])
    publish_folder(out_dir, {**files, "report.json": json_bytes(report)})
    return report


def _artifacts(graph: Any, options: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Every artifact built, and those to write."""
    from edgetune.export.config import ExportConfig
    from edgetune.pipeline.outputs import export_artifacts, names_to_write
    from edgetune.targets import load_target

    export = ExportConfig(formats=tuple(f.strip() for f in options["formats"].split(",")))
    artifacts = export_artifacts(graph, load_target(options["target"]), export)
    return artifacts, {name: artifacts[name] for name in names_to_write(export, artifacts)}


def _evaluate(files: dict[str, bytes], data: Dataset, labels: list[int], exclude: np.ndarray | None) -> dict[str, Any]:
    """The int8 artifacts on ``data``'s examples of the adapted classes (outputs mapped back)."""
    from edgetune.evaluate.runtime import OnnxRunner

    assert data.y is not None
    keep = np.isin(data.y, labels)
    if exclude is not None:
        keep[exclude] = False  # the support examples, when evaluation reads the same data
    x, y = data.x[keep], np.searchsorted(labels, data.y[keep])
    if not len(x):
        raise InputError(f"{data.source} holds no example of the classes {labels}", "give --eval data of the adapted classes")
    onnx_top = OnnxRunner(files["model.onnx"]).run(x).reshape(len(x), -1).argmax(1)
    result: dict[str, Any] = {"data": data.source, "samples": int(len(x)), "onnx_accuracy": float((onnx_top == y).mean())}
    if exclude is not None:
        result["note"] = "the support examples were left out"
    if "model.tflite" in files:
        from edgetune.evaluate.tflite_runtime import TfliteRunner

        tflite_top = TfliteRunner(files["model.tflite"]).run(x).reshape(len(x), -1).argmax(1)
        result |= {"tflite_accuracy": float((tflite_top == y).mean()), "agreement": float((tflite_top == onnx_top).mean())}
    return result
