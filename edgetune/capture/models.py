"""Load the MODEL argument: a Python callable, a ``torch.export`` .pt2 file, an .onnx file, or a
Hugging Face model folder (hf.py)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune.callables import load_callable, looks_like_callable, user_code
from edgetune.capture.hf import is_hf_folder, load_hf_folder
from edgetune.capture.pt2 import load_pt2
from edgetune.errors import InputError


@dataclass
class LoadedModel:
    """A model ready for capture: a module, an exported program or an ONNX file."""

    kind: str  # "module", "program" or "onnx"
    source: str
    module: nn.Module | None = None
    program: torch.export.ExportedProgram | None = None
    onnx_path: Path | None = None

    def declared_input_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape the model itself tells, if any."""
        if self.program is not None:
            for node in self.program.graph_module.graph.nodes:
                if node.op == "placeholder" and node.name in _user_inputs(self.program):
                    return tuple(int(d) for d in node.meta["val"].shape[1:])
        if self.onnx_path is not None:
            return _onnx_input_shape(self.onnx_path)
        if self.module is not None:
            shape = getattr(self.module, "input_shape", None)
            if shape is not None:
                return tuple(int(d) for d in shape)
        return None

    def input_names(self) -> tuple[list[str], list[str]]:
        """The model's input names in order, and those it cannot do without: a module's forward
        arguments (those without a default are required), a program's or an ONNX file's inputs
        (all required). Empty when the forward takes ``*args`` only."""
        if self.program is not None:
            names = list(_user_inputs(self.program))
            return names, names
        if self.onnx_path is not None:
            names = _onnx_inputs(self.onnx_path)
            return names, names
        if self.module is None:
            return [], []
        try:
            parameters = list(inspect.signature(self.module.forward).parameters.values())
        except (TypeError, ValueError):
            return [], []
        named = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return [p.name for p in named], [p.name for p in named if p.default is p.empty]


def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []  # the importer reports the broken file with a proper message
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _onnx_input_shape(path: Path) -> tuple[int, ...] | None:
    """The per-sample input shape an ONNX file declares, when every dimension after the batch is fixed."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None  # the importer reports the broken file with a proper message
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim[1:]  # several inputs share one shape (capture checks it)
    if not dims or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _user_inputs(program: torch.export.ExportedProgram) -> list[str]:
    kind = torch.export.graph_signature.InputKind.USER_INPUT
    return [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == kind]


def load_model(spec: str, weights: str | None = None) -> LoadedModel:
    path = Path(spec)
    if is_hf_folder(path):
        if weights is not None:
            raise InputError("--weights goes with a Python model callable", f"{path} carries its weights")
        return LoadedModel("module", spec, module=load_hf_folder(path))
    if path.suffix in (".pt2", ".onnx") or (path.exists() and not spec.endswith(".py")):
        if not path.is_file():
            raise InputError(f"model file {path} does not exist", "check the path")
        if weights is not None:
            raise InputError("--weights goes with a Python model callable", f"{path.suffix} files carry their weights")
        if path.suffix == ".pt2":
            return LoadedModel("program", spec, program=load_pt2(path))
        if path.suffix == ".onnx":
            return LoadedModel("onnx", spec, onnx_path=path)
        raise InputError(f"model file {path} is neither .pt2 nor .onnx", "give file.py:callable, module:callable, a .pt2 or an .onnx file")
    if not looks_like_callable(spec):
        raise InputError(f"model {spec!r} is not a file or a callable", "give file.py:callable, module:callable, a .pt2 or an .onnx file")
    factory = load_callable(spec, "model")
    with user_code(f"calling {spec}", "make the callable build the model with no arguments"):
        module = factory()
    if not isinstance(module, nn.Module):
        raise InputError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module", "return the model from the callable")
    if weights is not None:
        load_weights(module, Path(weights))
    return LoadedModel("module", spec, module=module.eval())


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a state dict from .safetensors, or from .pt/.pth without unpickling code."""
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist", "check the path")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot read weights from {path} ({type(exc).__name__})",
            "give a .safetensors file or a state dict saved with torch.save (plain tensors only)",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a state dict", "save model.state_dict()")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else ""
        raise InputError(
            f"{path} does not fit the model: {first} {detail}".strip(), "check that the weights belong to this architecture"
        ) from None
