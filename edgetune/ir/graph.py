"""Graph, Node, Tensor and QParams."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Ops that carry a weight (inputs[1]) and an optional bias (inputs[2]): the layers that
# quantization, pruning, fine-tuning and the exporters treat as layers.
# A transposed convolution keeps its weight as [out, in, kh, kw] (PyTorch stores [in, out, ...]),
# so that every pass finds a layer's output channels on axis 0.
WEIGHTED_OPS = frozenset({"conv2d", "linear", "conv_transpose2d"})
# Activations without an int8 kernel in either runtime: both files compute them in float between
# the int8 input and output (TFLite: DEQUANTIZE, float ops, QUANTIZE).
FLOAT_ACTIVATIONS = frozenset({"elu", "softplus", "mish"})
# One input, one output, every element on its own: activations, whatever the tensor's rank.
ACTIVATION_OPS = frozenset({"relu", "relu6", "clamp", "sigmoid", "tanh", "hardswish", "leaky_relu", "gelu"}) | FLOAT_ACTIVATIONS


@dataclass
class QParams:
    """Affine quantization ``real = scale * (q - zero_point)``.

    ``axis`` is None for per-tensor parameters, else the channel axis of the tensor.
    ``dtype`` is the stored integer type: int8 for weights and activations, int32 for biases
    (int16 activations and int64 biases for layers the mixed-precision fallback widens).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = "int8"
    axis: int | None = None

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.scale.shape != self.zero_point.shape:
            raise ValueError(f"scale {self.scale.shape} and zero point {self.zero_point.shape} differ in shape")
        if self.axis is None and self.scale.size != 1:
            raise ValueError("per-tensor parameters need exactly one scale")

    @property
    def is_bias(self) -> bool:
        """A bias grid (int32, or int64 under int16 activations): levels of input x weight scale."""
        return self.dtype in ("int32", "int64")

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int, dtype: str = "int8") -> QParams:
        return cls(np.asarray([scale], np.float32), np.asarray([zero_point], np.int64), dtype)

    def same_as(self, other: QParams | None) -> bool:
        return (
            other is not None
            and self.dtype == other.dtype
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": [float(s) for s in self.scale],
            "zero_point": [int(z) for z in self.zero_point],
            "dtype": self.dtype,
            "axis": self.axis,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QParams:
        return cls(np.asarray(raw["scale"], np.float32), np.asarray(raw["zero_point"]), raw["dtype"], raw["axis"])


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # set for constants: the float model's values
    quant: QParams | None = None
    # What the int8 model quantizes when a post-training technique made it differ from the
    # float model (AdaRound's rounding, a corrected bias); None means ``data``.
    qdata: np.ndarray | None = None
    # A graph input's element type: float32, or int64 for indices (token ids) that the model
    # looks up; an integer input is never quantized.
    dtype: str = "float32"

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def is_integer(self) -> bool:
        return self.dtype != "float32"

    @property
    def int8_source(self) -> np.ndarray | None:
        """The values the int8 artifacts quantize."""
        return self.qdata if self.qdata is not None else self.data


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def act(self) -> str:
        """The fused activation: none, relu or relu6."""
        return str(self.attrs.get("act", "none"))

    @property
    def in_float(self) -> bool:
        """A weighted layer kept in float in the int8 model (the mixed-precision fallback):
        its weights and bias are float, its input and output stay int8 tensors."""
        return self.attrs.get("precision") == "float"


@dataclass
class Graph:
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Tensor]
    nodes: list[Node]
    meta: dict[str, Any] = field(default_factory=dict)

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = defaultdict(list)
        for node in self.nodes:
            for name in node.inputs:
                users[name].append(node)
        return users

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    @property
    def calibrated(self) -> bool:
        """Whether the graph carries int8 activation parameters (on any activation: an integer
        input has none, and a float op may write the output)."""
        return any(self.tensors[name].quant is not None for name in self.activations())

    def const(self, name: str) -> np.ndarray:
        data = self.tensors[name].data
        if data is None:
            raise KeyError(f"tensor {name} is not a constant")
        return data

    def activations(self) -> list[str]:
        """Non-constant tensors in execution order: graph inputs, then node outputs."""
        names = list(self.inputs)
        for node in self.nodes:
            names.extend(node.outputs)
        return names

    def remove_unused(self) -> None:
        used = set(self.inputs) | set(self.outputs)
        for node in self.nodes:
            used.update(node.inputs)
            used.update(node.outputs)
        self.tensors = {name: t for name, t in self.tensors.items() if name in used}

    def rename_input(self, old: str, new: str) -> None:
        """Point every consumer of ``old`` (and the graph outputs) at ``new``."""
        for node in self.nodes:
            node.inputs = [new if name == old else name for name in node.inputs]
        self.outputs = [new if name == old else name for name in self.outputs]

    def parameter_count(self) -> int:
        return int(sum(t.data.size for t in self.tensors.values() if t.data is not None))


def depthwise_multiplier(graph: Graph, node: Node) -> int:
    """The channel multiplier of a depthwise convolution (as many groups as input channels, more
    than one), or 0 for any other node. Most passes want a multiplier of 1 (outputs map one to
    one onto inputs); TFLite's DEPTHWISE_CONV_2D takes any."""
    if node.op != "conv2d" or node.attrs.get("groups", 1) <= 1:
        return 0
    channels = graph.tensors[node.inputs[0]].shape[1]
    if node.attrs["groups"] != channels:
        return 0
    return int(graph.tensors[node.outputs[0]].shape[1]) // int(channels)
