"""The first stages: load the model and the data sets and check them against each other, then
capture the model as edgetune's graph. A run that starts from a compressed ``model.edgetune``
loads that graph instead and skips capture."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from edgetune.background import in_background
from edgetune.capture.hf import folder_tokenizer
from edgetune.capture.models import LoadedModel, load_model
from edgetune.data import Dataset, load_dataset
from edgetune.data.dataset import Role
from edgetune.data.inputs import match_inputs
from edgetune.data.sources import runs_user_code
from edgetune.data.text import TextSpec
from edgetune.errors import InputError
from edgetune.finetune.head import add_head, add_pooling, needs_head, needs_pooling
from edgetune.ir.graph import Graph
from edgetune.ir.stats import graph_summary
from edgetune.pipeline.outputs import checkpoint_path
from edgetune.pipeline.plan import DataSpec, ModelSpec, Plan, Run
from edgetune.quantize import QuantConfig
from edgetune.timing import step


def capture_model(loaded: LoadedModel, shape: tuple[int, ...], dtype: str = "float32", names: tuple[str, ...] = ()) -> Graph:
    """The model as edgetune's graph, for samples of ``shape``: float values, or ``int64`` token
    ids. ``names``: the forward's arguments, when it takes several inputs (data.inputs)."""
    if loaded.kind == "onnx":
        from edgetune.capture.onnx_import import import_onnx

        assert loaded.onnx_path is not None
        graph = import_onnx(loaded.onnx_path, shape, names)
        takes = {graph.tensors[name].is_integer for name in graph.inputs}
        if takes != {dtype != "float32"}:
            wanted = "integer ids or masks" if True in takes else "float values"
            raise InputError(f"{loaded.onnx_path} takes {wanted}, the data holds {dtype} values", f"give it {wanted}")
        return graph
    from edgetune.capture import capture

    source: Any = loaded.program if loaded.program is not None else loaded.module
    return capture(source, shape, dtype, names)


def load_any(model: ModelSpec, weights: str | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return LoadedModel("module", type(model).__name__, module=model.eval())
    return load_model(model, weights)


def load_compressed(path: str | Path, calibrated: bool = False) -> Graph:
    """A ``model.edgetune`` that compress wrote: a graph with its quantization parameters, or
    in a mode that calibrates nothing (unless ``calibrated`` asks for the int8 model)."""
    from edgetune.ir.serialize import load_graph

    graph = load_graph(Path(path))
    mode = graph.meta.get("mode", "int8")
    if mode != "int8" and calibrated:
        raise InputError(
            f"{path} was compressed with --mode {mode}: it has no int8 model to fine-tune",
            "fine-tune the float model, or compress it with --mode int8",
        )
    if mode == "int8" and not any(t.quant is not None for t in graph.tensors.values()):
        raise InputError(f"{path} holds no quantization parameters", "pass the model.edgetune that edgetune compress wrote")
    return graph


@dataclass(frozen=True)
class Loaded:
    source: str
    kind: str  # module, program, onnx or compressed
    input_shape: tuple[int, ...]
    data: dict[str, dict[str, Any]]  # role -> source and samples

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "input_shape": list(self.input_shape), "data": self.data}


class Load:
    """The model and every data set, checked against each other before any work."""

    name = "load"

    def wanted(self, run: Run) -> bool:
        return True

    def __call__(self, run: Run) -> Loaded:
        plan = run.plan
        kind = _load_compressed(run) if plan.from_compressed else _load_model(run)
        if plan.finetune is not None:
            run.checkpoint = checkpoint_path(run.out, plan.resume)
        sets = {"calibration": run.calib_set, "evaluation": run.eval_set, "training": run.train_set}
        data = {role: _described(d) for role, d in sets.items() if d is not None}
        return Loaded(run.source, kind, run.shape, data)


def _described(data: Dataset) -> dict[str, Any]:
    """A data set for the report: source and size, and for text how its passages were tokenized."""
    text = data.preprocess.get("text")
    return {"source": data.source, "samples": len(data), **({"text": text} if text else {})}


def _load_model(run: Run) -> str:
    """The model and its data sets; returns the model's kind."""
    plan = run.plan
    if plan.calib is None:
        raise InputError("no data.calib is given", "pass --calib DATA (e.g. digits), or set data.calib in the recipe")
    if plan.teacher is not None:
        raise InputError(
            "a teacher is for recovering a compressed model.edgetune", "drop --teacher: the model being compressed teaches its recovery"
        )

    # The data sets load in a thread while the model is built: decoding and resizing images
    # waits on little that building a model holds. An error in either is raised in this order.
    # A data callable loads in this thread instead, after the model, within its time limit.
    def load_sets() -> list[Dataset | None]:
        return [_data(spec, role, run) for spec, role in _roles(plan)]

    callables = any(isinstance(spec, str) and runs_user_code(spec) for spec, _ in _roles(plan))
    sets = None if callables else in_background(load_sets, "load-data")
    with step("model"):
        run.loaded = load_any(plan.model, plan.weights)
    run.source = run.loaded.source
    with step("data" if sets is None else "data (beyond the model's build)"):
        calib, run.eval_set, run.train_set = sets.result() if sets is not None else load_sets()
    assert calib is not None
    names, required = run.loaded.input_names()
    calib = match_inputs(calib, names, required, "calibration")
    run.eval_set, run.train_set = (
        None if d is None else match_inputs(d, names, required, role)
        for d, role in ((run.eval_set, "evaluation"), (run.train_set, "training"))
    )
    run.calib_set = calib.sides()  # both sides of similarity pairs calibrate
    _check_recovery_inputs(run)
    shape = plan.input_shape or run.loaded.declared_input_shape() or calib.sample_shape
    if calib.sample_shape != shape:
        raise InputError(
            f"samples of {calib.source} have shape {_dims(calib.sample_shape)} but the model takes {_dims(shape)}",
            "give data preprocessed to the model's input shape, or fix --input-shape",
        )
    run.shape = shape
    _check_shapes(run, (run.eval_set, "evaluation"), (run.train_set if plan.trains else None, "training"))
    return run.loaded.kind


def _load_compressed(run: Run) -> str:
    """A compressed graph is recovered quantization-aware, on training data."""
    plan = run.plan
    run.source = str(plan.model)
    if not plan.trains:
        raise InputError(f"{plan.model} is compressed already", "recover it with a fine-tune budget (--finetune 300steps)")
    ignored = {"pruning": plan.prune is not None, "calibration data": plan.calib is not None, "sensitivity": plan.sensitivity}
    ignored |= {"quantization settings": plan.quant != QuantConfig(), "an input shape": plan.input_shape is not None}
    ignored |= {"weights": plan.weights is not None}
    given = [what for what, present in ignored.items() if present]
    if given:
        raise InputError(
            f"{plan.model} is compressed already: {', '.join(given)} would not apply to it", "compress the original model, or drop them"
        )
    run.graph = load_compressed(str(plan.model), calibrated=True)
    run.shape = tuple(run.graph.tensors[run.graph.inputs[0]].shape[1:])
    run.train_set = _data(plan.train_data, "train", run)
    run.eval_set = _data(plan.eval_data, "test", run)
    names = list(run.graph.inputs)
    run.train_set, run.eval_set = (
        None if d is None else match_inputs(d, names, names, role)
        for d, role in ((run.train_set, "training"), (run.eval_set, "evaluation"))
    )
    _check_recovery_inputs(run)
    _check_shapes(run, (run.train_set, "training"), (run.eval_set, "evaluation"))
    if plan.init is None:  # adaptation gives the model a head for data.train's classes
        check_labels(run.graph, training=run.train_set, evaluation=run.eval_set)
    check_ids(run.graph, training=run.train_set, evaluation=run.eval_set)
    if plan.teacher is not None:
        dtype = "int64" if run.graph.tensors[run.graph.inputs[0]].is_integer else "float32"
        run.teacher = capture_model(load_any(plan.teacher, plan.teacher_weights), run.shape, dtype, tuple(names) if len(names) > 1 else ())
    return "compressed"


@dataclass(frozen=True)
class Captured:
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.summary


class Capture:
    """The model as edgetune's graph; the data's labels checked against its outputs."""

    name = "capture"

    def wanted(self, run: Run) -> bool:
        return run.graph is None

    def __call__(self, run: Run) -> Captured:
        assert run.loaded is not None and run.calib_set is not None
        calib = run.calib_set
        graph = capture_model(run.loaded, run.shape, "int64" if calib.is_indices else "float32", calib.inputs if calib.stacked else ())
        # Calibration labels serve only the gradient pruning criteria; training labels only a
        # fine-tune. An adaptation (finetune.init) gives the model a head for data.train's classes.
        adapts = run.plan.init is not None
        if run.plan.finetune is not None and not adapts and needs_head(graph, run.train_set):
            with step("classification head"):
                assert run.train_set is not None
                graph.meta["head"] = add_head(graph, run.train_set)
        elif run.plan.finetune is not None and not adapts and needs_pooling(graph, run.train_set):
            graph.meta["head"] = add_pooling(graph)
        check_labels(
            graph,
            calibration=run.calib_set if run.plan.prune is not None else None,
            evaluation=None if adapts else run.eval_set,
            training=run.train_set if run.plan.finetune is not None else None,
        )
        check_ids(graph, calibration=run.calib_set, evaluation=run.eval_set, training=run.train_set)
        run.graph = graph
        if run.plan.finetune is not None or run.plan.prune is not None:
            # the uncompressed model teaches the recovery, and the report compares the artifacts with it
            with step("copy for the teacher"):
                run.teacher = copy.deepcopy(graph)
        return Captured(graph_summary(graph))


def check_labels(graph: Graph, **sets: Dataset | None) -> None:
    """Every data set's class labels against the model's output size, before any work."""
    outputs = math.prod(graph.tensors[graph.outputs[0]].shape[1:])
    for role, data in sets.items():
        if data is not None:
            data.check_labels(outputs, role)


def check_ids(graph: Graph, **sets: Dataset | None) -> None:
    """Token ids against the embedding tables that each model input indexes, before any work:
    an id past a table's end is a tokenizer that does not match the model."""
    tables: dict[int, list[int]] = {}
    for node in graph.nodes:
        if node.op == "gather" and node.inputs[0] in graph.inputs:
            tables.setdefault(graph.inputs.index(node.inputs[0]), []).append(graph.const(node.inputs[1]).shape[0])
    for role, data in sets.items():
        if data is None or not tables:
            continue
        data = data.sides()  # a pair's second sides too
        if not data.is_indices:
            raise InputError(f"the model looks up token ids, but the {role} samples of {data.source} are floats", "store ids as int64")
        for index, rows in tables.items():
            ids = data.x[:, index] if len(graph.inputs) > 1 else data.x
            name = f" ({graph.inputs[index]})" if len(graph.inputs) > 1 else ""
            if int(ids.max()) >= min(rows):
                raise InputError(
                    f"{role} token ids{name} of {data.source} reach {int(ids.max())}, but the model's embedding has {min(rows)} rows",
                    "tokenize with the model's own vocabulary",
                )


def _roles(plan: Plan) -> list[tuple[DataSpec | None, Role]]:
    return [(plan.calib, "calibration"), (plan.eval_data, "test"), (plan.train_data, "train")]


def _data(spec: DataSpec | None, role: Role, run: Run) -> Dataset | None:
    if spec is None or isinstance(spec, Dataset):
        return spec
    with step(f"data ({role})"):
        return load_dataset(spec, role, run.plan.preprocess, progress=run.progress, text=_text_spec(run.plan))


def _text_spec(plan: Plan) -> TextSpec:
    """How text data is tokenized: with --tokenizer, else a Hugging Face model folder's own."""
    if plan.text.tokenizer is None and isinstance(plan.model, (str, Path)):
        own = folder_tokenizer(plan.model)
        if own is not None:
            return replace(plan.text, tokenizer=own)
    return plan.text


def _check_shapes(run: Run, *sets: tuple[Dataset | None, str]) -> None:
    for data, role in sets:
        if data is not None and data.sample_shape != run.shape:
            raise InputError(
                f"{role} samples of {data.source} have shape {_dims(data.sample_shape)} but the model takes {_dims(run.shape)}",
                f"give {role} data preprocessed like the calibration data",
            )


def _check_recovery_inputs(run: Run) -> None:
    if run.plan.finetune is not None and run.train_set is None:
        raise InputError("--finetune needs training data", "pass --train DATA (e.g. digits:train)")
    if run.plan.init is not None and run.train_set is None:
        raise InputError("finetune.init adapts to data.train's classes, and no data.train is given", "set data.train (--train DATA)")
    if run.plan.resume and run.plan.finetune is None:
        raise InputError(
            "--resume continues a fine-tune, but there is no --finetune budget", "repeat the interrupted command with --resume"
        )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
