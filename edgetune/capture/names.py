"""Layer names from the user's modules: ``block.conv1`` rather than torch.export's ``conv2d_2``.

torch.export records, on each node, the stack of modules whose ``forward`` made the call
(``node.meta["nn_module_stack"]``, innermost last, keyed by the module's dotted path). A node
is named after its innermost module:

- a leaf module whose nodes are all one op (a ``Conv2d``, a ``ReLU``) gives its path, and a
  second call of the same module gets ``#2``, ``#3``, ... (``block.relu``, ``block.relu#2``);
- an op that a module with children, or with several ops, calls itself (a residual block's
  ``x + y``) gives ``path.op`` (``block.add``), so a module's path names its layers only;
- an op in the top-level ``forward`` keeps torch.export's name (``mean``, ``flatten``).

Names stay unique across the graph's nodes and tensors; a clash gets the next free ``#N``
suffix. ``#`` is in no module path, so a suffixed name never takes a real module's name. A node's output tensor takes the node's new name.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch.fx

from edgetune.ir import Graph


def module_path(fx_node: torch.fx.Node) -> str:
    """The dotted path of the innermost module that called ``fx_node`` ('' for the top level)."""
    stack: Any = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return str(path[0]) if isinstance(path, (tuple, list)) and path else ""


def name_after_modules(graph: Graph, paths: dict[str, str], helpers: dict[str, str] | None = None) -> None:
    """Rename the nodes of a freshly lowered graph after their modules, and each node's output
    tensor with it (torch.export names a node's output after the node).

    ``paths`` maps a node's torch.export name to its module path; nodes without one keep
    their name. ``helpers`` (the reshapes around a Conv1d lowered as a 2-D conv, the steps of an
    unrolled GRU) are named ``path.suffix`` and leave the module's own name to the op they wrap."""
    helpers = helpers or {}
    by_path: dict[str, list[str]] = defaultdict(list)
    for node in graph.nodes:
        if paths.get(node.name) and node.name not in helpers:
            by_path[paths[node.name]].append(node.op)
    taken = {node.name for node in graph.nodes if not paths.get(node.name)} | set(graph.tensors)
    seen: dict[str, int] = defaultdict(int)
    renamed: dict[str, str] = {}
    for node in graph.nodes:
        path = paths.get(node.name)
        if not path:
            continue
        leaf = node.name not in helpers and len(set(by_path[path])) == 1 and not any(other.startswith(f"{path}.") for other in by_path)
        base = path if leaf else f"{path}.{helpers.get(node.name, node.op)}"
        count = seen[base]
        seen[base] += 1
        new = _free(base if count == 0 else f"{base}#{count + 1}", taken)
        taken.add(new)
        if node.outputs == [node.name]:
            renamed[node.name] = new
        node.name = new
    _rename_tensors(graph, renamed)


def _rename_tensors(graph: Graph, renamed: dict[str, str]) -> None:
    for node in graph.nodes:
        node.inputs = [renamed.get(name, name) for name in node.inputs]
        node.outputs = [renamed.get(name, name) for name in node.outputs]
    graph.outputs = [renamed.get(name, name) for name in graph.outputs]
    tensors = {}
    for name, tensor in graph.tensors.items():
        tensor.name = renamed.get(name, name)
        tensors[tensor.name] = tensor
    graph.tensors = tensors


def _free(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    suffix = 2
    while f"{name}#{suffix}" in taken:
        suffix += 1
    return f"{name}#{suffix}"
