"""Run ``torch.export`` and lower its graph to the IR."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from edgetune.capture import attention, lowerings, lowerings_1d, lowerings_math, lowerings_text, recurrent  # noqa: F401  (register the lowerings)
from edgetune.capture.attention import with_headwise_attention
from edgetune.capture.names import name_after_modules
from edgetune.capture.registry import LOWERINGS, LoweringContext
from edgetune.errors import InputError, UnsupportedOpsError
from edgetune.ir import Graph, Tensor
from edgetune.ir.passes import simplify
from edgetune.timing import step, timed


@timed("torch.export")
def export_program(
    model: nn.Module, sample_shape: tuple[int, ...], dtype: str = "float32", names: tuple[str, ...] = ()
) -> torch.export.ExportedProgram:
    """The model exported on one sample of ``sample_shape``: float, or ``int64`` indices (zeros,
    which every embedding table holds). ``names``: the forward's arguments, when it takes
    several inputs of that shape (token ids, attention mask, token types), passed by name."""
    example = torch.zeros((1, *sample_shape), dtype=getattr(torch, dtype))
    args: tuple[torch.Tensor, ...] = (example,) if len(names) < 2 else ()
    kwargs = {name: example.clone() for name in names} if len(names) > 1 else None
    model = with_headwise_attention(model.eval())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:
        if dtype == "float32" and "'indices'" in str(exc):
            raise InputError(
                "the model looks up token ids (an embedding), but the data holds float samples", "store the samples as int64 token ids"
            ) from exc
        raise InputError(
            f"torch.export could not capture the model with input shape {list(example.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "check --input-shape against the model, or make forward() exportable (see torch.export docs)",
        ) from exc


def capture(
    model: nn.Module | torch.export.ExportedProgram,
    sample_shape: tuple[int, ...] | None = None,
    dtype: str = "float32",
    names: tuple[str, ...] = (),
) -> Graph:
    """Capture a module (or an already exported program) as an IR graph, simplified. ``dtype``
    is the input's: float32, or int64 for a model that looks token ids up. ``names``: the
    forward's arguments when it takes several inputs of one shape."""
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        if sample_shape is None:
            raise InputError("the model's input shape is unknown", "pass --input-shape, e.g. 1x3x224x224")
        from edgetune.capture.cache import cached_capture

        shape = sample_shape
        return cached_capture(model.eval(), shape, lambda: _lowered(export_program(model, shape, dtype, names)), dtype, names)
    return _lowered(program)


def _lowered(program: torch.export.ExportedProgram) -> Graph:
    with step("lower"):
        graph = lower_program(program)
    with step("simplify"):
        simplify(graph)
    return graph


def _input_dtype(node: torch.fx.Node) -> str:
    """float32 for a floating-point input, int64 for an integer one (indices), else an error."""
    dtype = node.meta["val"].dtype
    if dtype.is_floating_point:
        return "float32"
    if dtype in (torch.int64, torch.int32):
        return "int64"
    raise InputError(f"the model's input is {dtype}", "give a model that takes a float tensor or integer indices (token ids)")


# Values that capture computes from constants: at most this many (a .pt2 from elsewhere must
# not make it allocate without bound; a weight-sized tensor is far below).
MAX_FOLDED = 1 << 26


def _constant_values(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Parameters, buffers and lifted constants by placeholder name, in their own dtypes."""
    values = {}
    for spec in program.graph_signature.input_specs:
        if spec.target is None:
            continue
        source = program.state_dict.get(spec.target)
        if source is None:
            source = program.constants.get(spec.target)
        if isinstance(source, torch.Tensor):
            values[spec.arg.name] = source.detach()
    return values


def _computed_from_constants(fx_graph: torch.fx.Graph, constants: set[str]) -> set[str]:
    """The call_function nodes that compute a tensor from constants alone (position ids, a
    mask's index grids, ``arange``): capture computes them, whatever the op."""
    found: set[str] = set()
    for node in fx_graph.nodes:
        value = node.meta.get("val")
        if node.op != "call_function" or not isinstance(value, torch.Tensor) or value.numel() > MAX_FOLDED:
            continue
        if all(a.name in constants or a.name in found for a in node.all_input_nodes):
            found.add(node.name)
    return found


def _fold(node: torch.fx.Node, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run one op of constants now."""

    def value(arg: Any) -> Any:
        return values[arg.name] if isinstance(arg, torch.fx.Node) else arg

    args = torch.fx.node.map_aggregate(node.args, value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    with torch.no_grad():
        return node.target(*args, **kwargs).detach()  # type: ignore[operator, union-attr]


def lower_program(program: torch.export.ExportedProgram) -> Graph:
    fx_graph = program.graph_module.graph
    values = _constant_values(program)
    folded = _computed_from_constants(fx_graph, set(values))
    missing = LOWERINGS.missing(n.target for n in fx_graph.nodes if n.op == "call_function" and n.name not in folded)
    if missing:
        raise UnsupportedOpsError(missing, "edgetune's capture")
    constants = {name: value.to(torch.float32).cpu().numpy().copy() for name, value in values.items()}
    user_inputs = [
        spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    if not user_inputs:
        raise InputError("the model takes no input", "give a model whose forward takes a tensor")
    graph = Graph(inputs=[], outputs=[], tensors={}, nodes=[])
    ctx = LoweringContext(constants, graph)
    for node in fx_graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            graph.inputs.append(node.name)
            graph.tensors[node.name] = Tensor(node.name, ctx.shape(node), dtype=_input_dtype(node))
        elif node.op == "call_function" and node.name in folded:
            values[node.name] = _fold(node, values)
            ctx.constants[node.name] = values[node.name].to(torch.float32).numpy().copy()
        elif node.op == "call_function":
            LOWERINGS[node.target](ctx, node)
        elif node.op == "output":
            results = node.args[0]
            results = results if isinstance(results, (list, tuple)) else [results]
            graph.outputs = [ctx.name(r) for r in results]
    shapes = {graph.tensors[name].shape for name in graph.inputs}
    if len(shapes) > 1:
        raise InputError(
            f"the model's inputs have the shapes {' and '.join(map(str, sorted(shapes)))}",
            "edgetune handles several inputs when they share one shape (token ids, attention mask, token types)",
        )
    if len(graph.outputs) != 1:
        raise InputError(f"the model returns {len(graph.outputs)} tensors", "edgetune handles models with exactly one output tensor")
    name_after_modules(graph, ctx.paths, ctx.helpers)
    return graph
