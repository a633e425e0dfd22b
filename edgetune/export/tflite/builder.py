"""Accumulates TFLite tensors and operators while the IR is walked."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tflite

from edgetune.export.tflite.layout import nhwc_shape, plain_tensors
from edgetune.export.tflite.model import OptionsWriter, QuantSpec, TflModel, TflOperator, TflTensor, array_bytes
from edgetune.ir.graph import Graph, QParams
from edgetune.ir.quant import activation_params, quantize_array

# (float version, int8 version) per builtin operator: the versions TFLite's converter gives
# these cases (tensorflow/lite/tools/versioning/op_version.cc), all within what both
# tflite-runtime 2.14 and current LiteRT register (checked by loading single-op models).
# MUL is the one op whose int8 version depends on its scales: see ops.elementwise.
VERSIONS: dict[int, tuple[int, int]] = {
    tflite.BuiltinOperator.CONV_2D: (1, 3),
    tflite.BuiltinOperator.DEPTHWISE_CONV_2D: (1, 3),
    tflite.BuiltinOperator.FULLY_CONNECTED: (1, 4),
    tflite.BuiltinOperator.ADD: (1, 2),
    tflite.BuiltinOperator.SUB: (1, 2),
    tflite.BuiltinOperator.MUL: (1, 2),
    tflite.BuiltinOperator.CONCATENATION: (1, 2),
    tflite.BuiltinOperator.AVERAGE_POOL_2D: (1, 2),
    tflite.BuiltinOperator.MAX_POOL_2D: (1, 2),
    tflite.BuiltinOperator.MEAN: (1, 2),
    tflite.BuiltinOperator.RESHAPE: (1, 1),
    tflite.BuiltinOperator.PAD: (1, 2),
    tflite.BuiltinOperator.PADV2: (1, 2),
    tflite.BuiltinOperator.DEPTH_TO_SPACE: (1, 1),
    tflite.BuiltinOperator.TRANSPOSE: (1, 2),
    tflite.BuiltinOperator.SOFTMAX: (1, 2),
    tflite.BuiltinOperator.LOG_SOFTMAX: (1, 2),
    tflite.BuiltinOperator.L2_NORMALIZATION: (1, 2),
    tflite.BuiltinOperator.LOGISTIC: (1, 2),
    tflite.BuiltinOperator.TANH: (1, 2),
    tflite.BuiltinOperator.HARD_SWISH: (1, 1),
    tflite.BuiltinOperator.LEAKY_RELU: (1, 2),
    tflite.BuiltinOperator.PRELU: (1, 1),  # one version registered, float and int8 alike
    tflite.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR: (1, 2),
    tflite.BuiltinOperator.RESIZE_BILINEAR: (1, 2),
    tflite.BuiltinOperator.STRIDED_SLICE: (1, 2),
    tflite.BuiltinOperator.GELU: (1, 2),
    tflite.BuiltinOperator.RELU: (1, 2),
    tflite.BuiltinOperator.RELU6: (1, 2),
    tflite.BuiltinOperator.QUANTIZE: (1, 1),
    tflite.BuiltinOperator.DEQUANTIZE: (2, 2),
    tflite.BuiltinOperator.GATHER: (1, 2),
    tflite.BuiltinOperator.CAST: (1, 1),  # int32 to float32 (an attention mask)
    tflite.BuiltinOperator.DIV: (1, 1),  # float only (quantize/stream.py)
}
ACTIVATIONS = {
    "none": tflite.ActivationFunctionType.NONE,
    "relu": tflite.ActivationFunctionType.RELU,
    "relu6": tflite.ActivationFunctionType.RELU6,
}


def quant_spec(q: QParams, dimension: int | None = None) -> QuantSpec:
    axis = q.axis if q.axis is not None else 0
    return QuantSpec([float(s) for s in q.scale], [int(z) for z in q.zero_point], axis if dimension is None else dimension)


@dataclass
class TflBuilder:
    graph: Graph
    quantized: bool
    model: TflModel = field(default_factory=TflModel)
    index: dict[str, int] = field(default_factory=dict)  # IR activation -> TFLite tensor
    # (IR weight, stored type) -> TFLite tensor: the steps of an unrolled GRU share one weight
    weights: dict[tuple[str, int], int] = field(default_factory=dict)
    shapes: dict[tuple[int, ...], int] = field(default_factory=dict)  # int32 operands (perms, slice bounds), shared by value
    plain: set[str] = field(default_factory=set)  # 4-D activations kept in the IR's order (attention's)

    def __post_init__(self) -> None:
        self.plain = plain_tensors(self.graph)

    def nhwc(self, name: str) -> bool:
        """Whether IR tensor ``name`` is stored NHWC (a 4-D image) in the file."""
        return len(self.graph.tensors[name].shape) == 4 and name not in self.plain

    def shape(self, name: str) -> list[int]:
        """IR tensor ``name``'s shape as the file stores it."""
        shape = list(self.graph.tensors[name].shape)
        return nhwc_shape(shape) if self.nhwc(name) else shape

    # The oldest TFLite with every operator version written so far: for int8, CONV_2D v3 and
    # FULLY_CONNECTED v4 arrived in 1.14; the 16x8 fallback raises it.
    min_runtime: str = "1.14.0"

    def require_runtime(self, version: str) -> None:
        """Raise the minimum runtime to ``version`` (as TFLite's runtime_version.cc maps op versions)."""
        if tuple(map(int, version.split("."))) > tuple(map(int, self.min_runtime.split("."))):
            self.min_runtime = version

    @property
    def act_dtype(self) -> int:
        return tflite.TensorType.INT8 if self.quantized else tflite.TensorType.FLOAT32

    def version(self, code: int) -> int:
        return VERSIONS[code][1 if self.quantized else 0]

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = 0,
        options: OptionsWriter | None = None,
        version: int | None = None,
    ) -> None:
        self.model.add_operator(TflOperator(code, version or self.version(code), inputs, outputs, options_type, options))

    def define(self, name: str) -> int:
        """The TFLite tensor for IR activation ``name`` (NHWC, int8 with its parameters when quantized)."""
        tensor = self.graph.tensors[name]
        if tensor.is_integer:  # token ids: TFLite's lookups take int32
            self.index[name] = self.model.add_tensor(TflTensor(name, self.shape(name), tflite.TensorType.INT32))
            return self.index[name]
        quant = quant_spec(tensor.quant) if self.quantized and tensor.quant is not None else None
        # In an int8 model, a tensor without parameters lies between two layers kept in float,
        # an int16 one between two layers the fallback gave int16 activations.
        dtype = self.act_dtype if quant is not None or not self.quantized else tflite.TensorType.FLOAT32
        if quant is not None and tensor.quant is not None and tensor.quant.dtype == "int16":
            dtype = tflite.TensorType.INT16
        self.index[name] = self.model.add_tensor(TflTensor(name, self.shape(name), dtype, quant=quant))
        return self.index[name]

    def like(self, name: str, shape: list[int], template: int) -> int:
        """An intermediate tensor with the type and parameters of tensor ``template``."""
        source = self.model.tensors[template]
        return self.model.add_tensor(TflTensor(name, shape, source.dtype, quant=source.quant))

    def const(self, name: str, array: np.ndarray, dtype: int, quant: QuantSpec | None = None) -> int:
        return self.model.add_tensor(TflTensor(name, list(array.shape), dtype, array_bytes(array), quant))

    def int32_const(self, name: str, values: list[int]) -> int:
        key = tuple(int(v) for v in values)
        if key not in self.shapes:
            self.shapes[key] = self.const(name, np.asarray(values, np.int32), tflite.TensorType.INT32)
        return self.shapes[key]

    def read(self, name: str, nhwc: bool = True) -> int:
        """The tensor of an IR input: an activation, or a constant operand of an elementwise op
        whose activations are stored NHWC (``nhwc``) or in the IR's order."""
        if name in self.index:
            return self.index[name]
        tensor = self.graph.tensors[name]
        data = self.graph.const(name)
        if data.ndim == 3 and nhwc:  # a (C, 1, 1) operand broadcast over NCHW is (1, 1, C) in NHWC
            data = data.transpose(1, 2, 0)
        elif data.ndim == 4 and nhwc:
            data = data.transpose(0, 2, 3, 1)
        if self.quantized:
            q = tensor.quant or activation_params(float(data.min()), float(data.max()))
            self.index[name] = self.const(name, quantize_array(data, q), tflite.TensorType.INT8, quant_spec(q))
        else:
            self.index[name] = self.const(name, data.astype(np.float32), tflite.TensorType.FLOAT32)
        return self.index[name]
