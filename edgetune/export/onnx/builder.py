"""A small accumulator of ONNX nodes and initializers, with the QDQ plumbing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.ir.graph import WEIGHTED_OPS, Graph, QParams
from edgetune.ir.quant import dequantize_array, levels_of, quantize_array

INT4_MAX = 7  # weights whose levels fit [-7, 7] are 4-bit ones


@dataclass
class OnnxBuilder:
    graph: Graph
    quantized: bool
    unsigned_activations: bool = False
    opset: int = 17
    int4_weights: bool = False  # 4-bit weights as INT4 initializers (opset 21)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # IR tensor -> ONNX value to read
    levels: dict[str, str] = field(default_factory=dict)  # IR activation -> its quantized (integer) ONNX value
    _taken: set[str] = field(default_factory=set)
    _cache: dict[str, set[str]] = field(default_factory=dict)

    def fresh(self, base: str) -> str:
        name, index = base, 1
        while name in self._taken:
            index += 1
            name = f"{base}_{index}"
        self._taken.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        outputs = outputs or [self.fresh(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(f"{op_type}_{outputs[0]}"), **attrs))
        return outputs

    def initializer(self, base: str, array: np.ndarray | np.generic) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.array(array, copy=True, order="C"), name))
        return name

    # -- reading IR tensors ---------------------------------------------------------------

    def read(self, tensor: str) -> str:
        """The ONNX value holding IR tensor ``tensor`` in float (dequantized when quantized)."""
        if tensor in self.names:
            return self.names[tensor]
        ir_tensor = self.graph.tensors[tensor]
        if ir_tensor.data is None:
            raise KeyError(f"tensor {tensor} is read before it is written")
        if self.quantized and ir_tensor.quant is not None:
            levels = quantize_array(ir_tensor.int8_source, ir_tensor.quant)  # type: ignore[arg-type]
            if ir_tensor.quant.dtype == "int64":  # an int16 layer's bias: DequantizeLinear takes no int64
                self.names[tensor] = self.initializer(tensor, dequantize_array(levels, ir_tensor.quant))
                return self.names[tensor]
            if self.int4_weights and levels_of(self.graph.meta, tensor) <= INT4_MAX:
                self.names[tensor] = self._dequantize_int4(tensor, levels, ir_tensor.quant)
                return self.names[tensor]
            # An elementwise op's constant operand (hardsigmoid's +3) takes the activations' type:
            # ONNX Runtime fuses an Add or Mul into QLinearAdd/QLinearMul only when both match.
            operand = ir_tensor.quant.dtype == "int8" and self.unsigned_activations and tensor not in self._weights()
            stored = self.initializer(f"{tensor}_quantized", (levels.astype(np.int16) + 128).astype(np.uint8) if operand else levels)
            self.names[tensor] = self._dequantize(stored, ir_tensor.quant, f"{tensor}_dq", constant=not operand)
        else:
            self.names[tensor] = self.initializer(tensor, ir_tensor.data.astype(np.float32))
        return self.names[tensor]

    def read_swapped_weight(self, tensor: str) -> str:
        """A weight with its first two axes swapped ([O, I, kh, kw] -> [I, O, kh, kw], the layout
        of ConvTranspose), dequantized per output channel, now axis 1."""
        ir_tensor = self.graph.tensors[tensor]
        assert ir_tensor.data is not None
        if not (self.quantized and ir_tensor.quant is not None):
            return self.initializer(tensor, np.swapaxes(ir_tensor.data, 0, 1).astype(np.float32))
        q = ir_tensor.quant
        levels = np.swapaxes(quantize_array(ir_tensor.int8_source, q), 0, 1)  # type: ignore[arg-type]
        stored = self.initializer(f"{tensor}_quantized", np.ascontiguousarray(levels))
        swapped = QParams(q.scale, q.zero_point, q.dtype, None if q.axis is None else 1)
        return self._dequantize(stored, swapped, f"{tensor}_dq", constant=True)

    def _weights(self) -> set[str]:
        """The weight tensors of weighted layers (int8 symmetric, whatever the activations' type)."""
        if "weights" not in self._cache:
            self._cache["weights"] = {node.inputs[1] for node in self.graph.nodes if node.op in WEIGHTED_OPS}
        return self._cache["weights"]

    def write(self, tensor: str, value: str) -> None:
        """Publish ``value`` (float) as IR tensor ``tensor``: quantize-dequantize it when quantized."""
        q = self.graph.tensors[tensor].quant
        if self.quantized and q is not None:
            scale, zero_point = self._qparams(q, tensor, constant=False)
            levels = self.node("QuantizeLinear", [value, scale, zero_point], [self.fresh(f"{tensor}_q")])[0]
            value = self.node("DequantizeLinear", [levels, scale, zero_point], [self.fresh(f"{tensor}_dq")])[0]
            self.levels[tensor] = levels
        self.names[tensor] = value

    def read_for_float_layer(self, tensor: str) -> str:
        """The input of a layer kept in float, dequantized per channel with every channel's
        scale the same: numerically the per-tensor value, but ONNX Runtime's
        WeightBiasQuantization (which quantizes a Conv's or Gemm's float weights when its
        input comes from a per-tensor DequantizeLinear) leaves the layer in float, as written."""
        value = self.read(tensor)
        q = self.graph.tensors[tensor].quant
        if not self.quantized or q is None or tensor not in self.levels:
            return value
        channels = self.graph.tensors[tensor].shape[1]
        scale, zero_point = self._qparams(q, f"{tensor}_per_channel", constant=False, repeat=channels)
        return self.node("DequantizeLinear", [self.levels[tensor], scale, zero_point], [self.fresh(f"{tensor}_dq_float")], axis=1)[0]

    def _qparams(self, q: QParams, base: str, constant: bool, repeat: int = 0) -> tuple[str, str]:
        zero_point = q.zero_point
        if q.dtype == "int8" and self.unsigned_activations and not constant:
            dtype: Any = np.uint8
            zero_point = zero_point + 128  # same grid: the uint8 level is the int8 level + 128
        else:
            dtype = np.dtype(q.dtype)
        if q.axis is None and repeat:
            return (
                self.initializer(f"{base}_scale", np.full(repeat, q.scale[0], np.float32)),
                self.initializer(f"{base}_zero_point", np.full(repeat, zero_point[0], dtype=dtype)),
            )
        if q.axis is None:
            return (
                self.initializer(f"{base}_scale", np.float32(q.scale[0])),
                self.initializer(f"{base}_zero_point", np.asarray(zero_point[0], dtype=dtype)),
            )
        return (
            self.initializer(f"{base}_scale", q.scale.astype(np.float32)),
            self.initializer(f"{base}_zero_point", zero_point.astype(dtype)),
        )

    def _dequantize_int4(self, tensor: str, levels: np.ndarray, q: QParams) -> str:
        """A 4-bit weight stored packed as INT4 (two values a byte; ONNX opset 21), symmetric."""
        stored = self.fresh(f"{tensor}_quantized")
        # raw: packed two values a byte in raw_data (a value list would go to int32_data as varints)
        self.initializers.append(helper.make_tensor(stored, onnx.TensorProto.INT4, levels.shape, levels.astype(np.int8).ravel(), raw=True))
        zero_name = self.fresh(f"{tensor}_zero_point")
        count = len(q.scale) if q.axis is not None else 1
        dims = [count] if q.axis is not None else []
        self.initializers.append(helper.make_tensor(zero_name, onnx.TensorProto.INT4, dims, [0] * count))
        scale = q.scale.astype(np.float32) if q.axis is not None else np.float32(q.scale[0])
        attrs = {"axis": q.axis} if q.axis is not None else {}
        return self.node(
            "DequantizeLinear", [stored, self.initializer(f"{tensor}_scale", scale), zero_name], [self.fresh(f"{tensor}_dq")], **attrs
        )[0]

    def _dequantize(self, stored: str, q: QParams, out: str, constant: bool) -> str:
        scale, zero_point = self._qparams(q, stored.removesuffix("_quantized"), constant)
        attrs = {"axis": q.axis} if q.axis is not None else {}
        return self.node("DequantizeLinear", [stored, scale, zero_point], [self.fresh(out)], **attrs)[0]
