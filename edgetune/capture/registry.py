"""The lowering registry: one function per ATen operator overload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx

from edgetune.capture.names import module_path
from edgetune.ir import Graph, Node, Tensor
from edgetune.registry import Registry

Lowering = Callable[["LoweringContext", torch.fx.Node], None]
LOWERINGS: Registry[Lowering] = Registry("ATen lowering")
lowers = LOWERINGS.register


@dataclass
class LoweringContext:
    """What a lowering needs: the constants, the IR built so far, and fx-node helpers."""

    constants: dict[str, np.ndarray]
    graph: Graph
    aliases: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)  # node name -> the module that called it
    # split/chunk nodes -> (axis, [(start, end), ...]): their getitem users become slices
    splits: dict[str, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)
    _counter: int = 0

    def name(self, arg: Any) -> str:
        """The IR tensor name of an fx argument (a node or a Python scalar constant)."""
        if isinstance(arg, torch.fx.Node):
            name = self.aliases.get(arg.name, arg.name)
            if name in self.constants and name not in self.graph.tensors:
                data = self.constants[name]
                self.graph.tensors[name] = Tensor(name, tuple(data.shape), data)
            return name
        if isinstance(arg, (int, float)):
            self._counter += 1
            name = f"const_{self._counter}"
            data = np.asarray(arg, dtype=np.float32)
            self.graph.tensors[name] = Tensor(name, (), data)
            return name
        raise TypeError(f"unsupported argument {arg!r}")

    def const(self, arg: Any) -> np.ndarray | None:
        if isinstance(arg, torch.fx.Node):
            return self.constants.get(self.aliases.get(arg.name, arg.name))
        return None

    @staticmethod
    def shape(node: torch.fx.Node) -> tuple[int, ...]:
        value = node.meta.get("val")
        if value is None or not hasattr(value, "shape"):
            raise TypeError(f"{node.name} carries no shape")
        return tuple(int(d) for d in value.shape)

    def emit(self, op: str, fx_node: torch.fx.Node, inputs: list[str], **attrs: Any) -> Node:
        out = fx_node.name
        self.graph.tensors[out] = Tensor(out, self.shape(fx_node))
        node = Node(op, fx_node.name, inputs, [out], dict(attrs))
        self.paths[node.name] = module_path(fx_node)
        self.graph.nodes.append(node)
        return node

    def emit_inner(self, op: str, fx_node: torch.fx.Node, suffix: str, inputs: list[str], **attrs: Any) -> str:
        """An IR node inside the lowering of ``fx_node`` (one step of a decomposed op), with a
        tensor of ``fx_node``'s shape; returns that tensor's name."""
        out = f"{fx_node.name}_{suffix}"
        self.graph.tensors[out] = Tensor(out, self.shape(fx_node))
        self.graph.nodes.append(Node(op, out, inputs, [out], dict(attrs)))
        self.paths[out] = module_path(fx_node)
        return out

    def alias(self, fx_node: torch.fx.Node, source: Any) -> None:
        """The fx node is the same tensor as ``source`` (identity ops such as dropout in eval)."""
        self.aliases[fx_node.name] = self.name(source)
