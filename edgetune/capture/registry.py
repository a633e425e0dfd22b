"""The lowering registry: one function per ATen operator overload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx

from edgetune.capture.names import module_path
from edgetune.errors import InputError
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
    # multi-output nodes (a GRU's (output, h_n)) -> what each getitem of them names
    tuples: dict[str, list[str]] = field(default_factory=dict)
    # final states stacked over layers (h_n): only indexing one of them is supported
    stacks: dict[str, list[str]] = field(default_factory=dict)
    # per-step tensors of a sequence output (``sequences[y][t]`` is y[:, t]): y[:, t] reads them
    sequences: dict[str, list[str]] = field(default_factory=dict)
    # unbind nodes -> their axis: each getitem of them is a select
    unbinds: dict[str, int] = field(default_factory=dict)
    # permutes that move the batch axis -> (source, perm): only indexing their first axis is supported
    batch_permutes: dict[str, tuple[Any, list[int]]] = field(default_factory=dict)
    # F.normalize's norm (and its clamp and expansion) -> (the normalized tensor, axis, eps)
    norms: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    # outputs nothing may read (a max pool's indices) -> why
    unreadable: dict[str, str] = field(default_factory=dict)
    # nodes inside a decomposed op that must not take the module's own name -> the suffix they
    # are named by instead (``rnn.l0t3_gx``, ``conv.reshape``)
    helpers: dict[str, str] = field(default_factory=dict)
    _counter: int = 0

    def name(self, arg: Any) -> str:
        """The IR tensor name of an fx argument (a node or a Python scalar constant)."""
        if isinstance(arg, torch.fx.Node):
            name = self.aliases.get(arg.name, arg.name)
            if name in self.unreadable:
                raise InputError(f"{arg.name} is {self.unreadable[name]}", "use the values only")
            if name in self.norms:
                raise InputError(f"{arg.name} is a vector norm used other than by F.normalize", "use F.normalize(x, dim=...)")
            if name in self.batch_permutes:
                raise InputError(f"{arg.name} moves the batch axis", "keep axis 0 as the batch axis, or index the permuted axis 0 at once")
            if name in self.stacks:
                raise InputError(f"{arg.name} stacks a recurrent layer's final states", "read one of them (h_n[-1]) or the output sequence")
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

    def resolve(self, arg: Any) -> str:
        """The IR name an fx node stands for, without registering a constant or checking stacks."""
        name = str(arg.name) if isinstance(arg, torch.fx.Node) else str(arg)
        return self.aliases.get(name, name)

    def constant(self, name: str, data: np.ndarray) -> str:
        """A new constant tensor (a reshaped weight, a per-step bias), under ``name`` or, when
        that is taken, a numbered variant of it."""
        base = name
        while name in self.graph.tensors or name in self.constants:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self.graph.tensors[name] = Tensor(name, tuple(data.shape), np.ascontiguousarray(data, dtype=np.float32))
        return name

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

    @staticmethod
    def dtype(node: torch.fx.Node) -> str:
        """The IR element type of an fx node's value: int64 for integers (ids, a mask, and
        what reshapes them), else float32."""
        value = node.meta.get("val")
        dtype = getattr(value, "dtype", None)
        return "int64" if dtype is not None and not dtype.is_floating_point else "float32"

    def emit(self, op: str, fx_node: torch.fx.Node, inputs: list[str], *, helper: bool = False, **attrs: Any) -> Node:
        out = fx_node.name
        self.graph.tensors[out] = Tensor(out, self.shape(fx_node), dtype=self.dtype(fx_node))
        node = Node(op, fx_node.name, inputs, [out], dict(attrs))
        self.paths[node.name] = module_path(fx_node)
        self.graph.nodes.append(node)
        if helper:
            self.helpers[node.name] = op
        return node

    def emit_inner(
        self,
        op: str,
        fx_node: torch.fx.Node,
        suffix: str,
        inputs: list[str],
        *,
        tensor_shape: tuple[int, ...] | None = None,
        helper: bool | str = False,
        **attrs: Any,
    ) -> str:
        """An IR node inside the lowering of ``fx_node`` (one step of a decomposed op), with a
        tensor of ``fx_node``'s shape unless ``tensor_shape`` is given; returns that tensor's name.
        A ``helper`` is named after its op (or the given suffix), never as the module itself."""
        out = f"{fx_node.name}_{suffix}"
        self.graph.tensors[out] = Tensor(out, self.shape(fx_node) if tensor_shape is None else tuple(tensor_shape))
        self.graph.nodes.append(Node(op, out, inputs, [out], dict(attrs)))
        self.paths[out] = module_path(fx_node)
        if helper:
            self.helpers[out] = op if helper is True else str(helper)
        return out

    def alias(self, fx_node: torch.fx.Node, source: Any) -> None:
        """The fx node is the same tensor as ``source`` (identity ops such as dropout in eval)."""
        self.aliases[fx_node.name] = self.name(source)
