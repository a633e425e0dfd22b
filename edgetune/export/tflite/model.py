"""An in-memory TFLite model (tensors, operators, metadata) and its flatbuffer serialization.

The flatbuffer is built with the generated bindings of the ``tflite`` package (schema
version 3, file identifier ``TFL3``), using only their prefixed functions
(``tflite.ModelStart`` ...). Constant buffers are copied in bulk, 16-byte aligned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16

OptionsWriter = Callable[[flatbuffers.Builder], int]


@dataclass
class QuantSpec:
    scale: list[float]
    zero_point: list[int]
    dimension: int = 0


@dataclass
class TflTensor:
    name: str
    shape: list[int]
    dtype: int  # tflite.TensorType
    data: bytes | None = None
    quant: QuantSpec | None = None
    shape_signature: list[int] | None = None


@dataclass
class TflOperator:
    code: int  # tflite.BuiltinOperator
    version: int
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0  # tflite.BuiltinOptions.NONE
    options: OptionsWriter | None = None


@dataclass
class TflModel:
    tensors: list[TflTensor] = field(default_factory=list)
    operators: list[TflOperator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "edgetune"
    metadata: dict[str, bytes] = field(default_factory=dict)

    def add_tensor(self, tensor: TflTensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def add_operator(self, operator: TflOperator) -> None:
        self.operators.append(operator)

    def serialize(self) -> bytes:
        return _Serializer(self).run()


def _int_vector(builder: flatbuffers.Builder, values: list[int]) -> int:
    return _numbers(builder, values, "<i4")


def _numbers(builder: flatbuffers.Builder, values: list[int] | list[float], dtype: str) -> int:
    """A vector of scalars copied in one slice, the same bytes as one prepend per element (a
    vector's alignment is its element's size, as the generated Start...Vector functions ask);
    an EfficientNet's per-channel scales and zero points are about 90,000 elements."""
    return int(builder.CreateNumpyVector(np.asarray(values, dtype=dtype)))


def _offset_vector(builder: flatbuffers.Builder, start: Callable[[flatbuffers.Builder, int], None], offsets: list[int]) -> int:
    start(builder, len(offsets))
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())


def _aligned_bytes(builder: flatbuffers.Builder, data: bytes) -> int:
    """A byte vector copied in one slice (per-byte prepends are ~1000x slower), 16-byte aligned."""
    builder.StartVector(1, len(data), BUFFER_ALIGNMENT)
    builder.head = builder.head - len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return int(builder.EndVector(len(data)))


class _Serializer:
    def __init__(self, model: TflModel) -> None:
        self.model = model
        size = sum(len(t.data) for t in model.tensors if t.data is not None)
        self.builder = flatbuffers.Builder(size + 1024 * 1024)
        self.buffers: list[bytes | None] = [None]  # buffer 0 is the empty sentinel

    def run(self) -> bytes:
        b, model = self.builder, self.model
        buffer_index = []
        for tensor in model.tensors:
            if tensor.data is None:
                buffer_index.append(0)
            else:
                self.buffers.append(tensor.data)
                buffer_index.append(len(self.buffers) - 1)
        metadata_buffers = {}
        for key, blob in model.metadata.items():
            self.buffers.append(blob)
            metadata_buffers[key] = len(self.buffers) - 1

        # Buffers first: they are the bulk of the file, written back to front.
        buffer_offsets = []
        for data in reversed(self.buffers):
            data_offset = _aligned_bytes(b, data) if data else None
            tflite.BufferStart(b)
            if data_offset is not None:
                tflite.BufferAddData(b, data_offset)
            buffer_offsets.append(tflite.BufferEnd(b))
        buffer_offsets.reverse()

        tensors = [self._tensor(t, buffer_index[i]) for i, t in enumerate(model.tensors)]
        operators = [self._operator(op) for op in model.operators]
        codes = self._operator_codes()
        subgraph = self._subgraph(tensors, operators)
        signature = self._signature()
        metadata = []
        for key, index in metadata_buffers.items():
            name = b.CreateString(key)
            tflite.MetadataStart(b)
            tflite.MetadataAddName(b, name)
            tflite.MetadataAddBuffer(b, index)
            metadata.append(tflite.MetadataEnd(b))
        description = b.CreateString(model.description)

        codes_vec = _offset_vector(b, tflite.ModelStartOperatorCodesVector, codes)
        subgraphs_vec = _offset_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
        buffers_vec = _offset_vector(b, tflite.ModelStartBuffersVector, buffer_offsets)
        metadata_vec = _offset_vector(b, tflite.ModelStartMetadataVector, metadata)
        signature_vec = _offset_vector(b, tflite.ModelStartSignatureDefsVector, [signature])
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, codes_vec)
        tflite.ModelAddSubgraphs(b, subgraphs_vec)
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, buffers_vec)
        tflite.ModelAddMetadata(b, metadata_vec)
        tflite.ModelAddSignatureDefs(b, signature_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
        return bytes(b.Output())

    def _quant(self, quant: QuantSpec) -> int:
        b = self.builder
        scale = _numbers(b, quant.scale, "<f4")
        zero_point = _numbers(b, quant.zero_point, "<i8")
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zero_point)
        tflite.QuantizationParametersAddQuantizedDimension(b, quant.dimension)
        return int(tflite.QuantizationParametersEnd(b))

    def _tensor(self, tensor: TflTensor, buffer: int) -> int:
        b = self.builder
        name = b.CreateString(tensor.name)
        shape = _int_vector(b, tensor.shape)
        signature = _int_vector(b, tensor.shape_signature) if tensor.shape_signature else None
        quant = self._quant(tensor.quant) if tensor.quant is not None else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        if signature is not None:
            tflite.TensorAddShapeSignature(b, signature)
        tflite.TensorAddType(b, tensor.dtype)
        tflite.TensorAddBuffer(b, buffer)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        return int(tflite.TensorEnd(b))

    def _operator(self, op: TflOperator) -> int:
        b = self.builder
        inputs = _int_vector(b, op.inputs)
        outputs = _int_vector(b, op.outputs)
        options = op.options(b) if op.options is not None else None
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, self._code_index(op))
        tflite.OperatorAddInputs(b, inputs)
        tflite.OperatorAddOutputs(b, outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(b, op.options_type)
            tflite.OperatorAddBuiltinOptions(b, options)
        return int(tflite.OperatorEnd(b))

    def _codes(self) -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        for op in self.model.operators:
            if (op.code, op.version) not in seen:
                seen.append((op.code, op.version))
        return seen

    def _code_index(self, op: TflOperator) -> int:
        return self._codes().index((op.code, op.version))

    def _operator_codes(self) -> list[int]:
        b = self.builder
        offsets = []
        for code, version in self._codes():
            tflite.OperatorCodeStart(b)
            # Codes past 127 live in builtin_code; the int8 field keeps min(code, 127).
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, version)
            offsets.append(tflite.OperatorCodeEnd(b))
        return offsets

    def _subgraph(self, tensors: list[int], operators: list[int]) -> int:
        b = self.builder
        tensors_vec = _offset_vector(b, tflite.SubGraphStartTensorsVector, tensors)
        inputs = _int_vector(b, self.model.inputs)
        outputs = _int_vector(b, self.model.outputs)
        operators_vec = _offset_vector(b, tflite.SubGraphStartOperatorsVector, operators)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vec)
        tflite.SubGraphAddInputs(b, inputs)
        tflite.SubGraphAddOutputs(b, outputs)
        tflite.SubGraphAddOperators(b, operators_vec)
        tflite.SubGraphAddName(b, name)
        return int(tflite.SubGraphEnd(b))

    def _tensor_maps(self, indices: list[int], start: Callable[[flatbuffers.Builder, int], None]) -> int:
        b = self.builder
        maps = []
        for index in indices:
            name = b.CreateString(self.model.tensors[index].name)
            tflite.TensorMapStart(b)
            tflite.TensorMapAddName(b, name)
            tflite.TensorMapAddTensorIndex(b, index)
            maps.append(tflite.TensorMapEnd(b))
        return _offset_vector(b, start, maps)

    def _signature(self) -> int:
        b = self.builder
        inputs = self._tensor_maps(self.model.inputs, tflite.SignatureDefStartInputsVector)
        outputs = self._tensor_maps(self.model.outputs, tflite.SignatureDefStartOutputsVector)
        key = b.CreateString("serving_default")
        tflite.SignatureDefStart(b)
        tflite.SignatureDefAddInputs(b, inputs)
        tflite.SignatureDefAddOutputs(b, outputs)
        tflite.SignatureDefAddSignatureKey(b, key)
        tflite.SignatureDefAddSubgraphIndex(b, 0)
        return int(tflite.SignatureDefEnd(b))


def array_bytes(array: np.ndarray) -> bytes:
    """Little-endian raw bytes, as TFLite buffers hold them."""
    return bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
