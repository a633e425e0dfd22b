"""The float TFLite model rewritten for the modes without calibration, as the TFLite
converter's post-training options write them:

- ``float16``: the weights and biases of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED stored
  as FLOAT16, each read through a DEQUANTIZE op to float32 at the head of the graph (XNNPACK
  and the built-in kernels compute in float; the file is half the size);
- ``dynamic-int8`` (dynamic range quantization): the weights of CONV_2D and FULLY_CONNECTED
  stored as int8, symmetric with a scale per output channel for convolutions (or one per layer)
  and one per layer for FULLY_CONNECTED, biases float.
  The runtime's hybrid kernels quantize each layer's float input per inference and compute in
  integers; activations stay float between layers. Depthwise layers stay float: they hold few
  weights, and XNNPACK has no hybrid depthwise kernel (it would leave them to slower ones).
"""

from __future__ import annotations

import numpy as np
import tflite

from edgetune.export.tflite.model import QuantSpec, TflModel, TflOperator, TflTensor
from edgetune.ir.quant import weight_params

LAYERS = (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D, tflite.BuiltinOperator.FULLY_CONNECTED)
# The channel axis of each layer's weights: OHWI, 1HWO and (out, in).
CHANNEL_AXIS = {tflite.BuiltinOperator.CONV_2D: 0, tflite.BuiltinOperator.DEPTHWISE_CONV_2D: 3, tflite.BuiltinOperator.FULLY_CONNECTED: 0}
# The versions TFLite's op_version.cc gives a hybrid layer (float input, int8 weights per
# channel) and a float16 DEQUANTIZE.
HYBRID_VERSIONS = {
    tflite.BuiltinOperator.CONV_2D: 5,
    tflite.BuiltinOperator.DEPTHWISE_CONV_2D: 6,
    tflite.BuiltinOperator.FULLY_CONNECTED: 3,
}
DEQUANTIZE_FLOAT16 = 3


def _float_constants(model: TflModel, operator: TflOperator) -> list[int]:
    """The float32 constant inputs (weights, bias) of a layer."""
    return [
        index
        for index in operator.inputs[1:]
        if index >= 0 and model.tensors[index].data is not None and model.tensors[index].dtype == tflite.TensorType.FLOAT32
    ]


def float16_weights(model: TflModel) -> None:
    """In place: the layers' float constants as FLOAT16 behind DEQUANTIZE."""
    dequantize = []
    for operator in [op for op in model.operators if op.code in LAYERS]:
        for index in _float_constants(model, operator):
            tensor = model.tensors[index]
            values = np.frombuffer(tensor.data or b"", np.float32).astype(np.float16)
            half = model.add_tensor(TflTensor(f"{tensor.name}_float16", list(tensor.shape), tflite.TensorType.FLOAT16, values.tobytes()))
            tensor.data = None  # now the DEQUANTIZE op's output
            dequantize.append(TflOperator(tflite.BuiltinOperator.DEQUANTIZE, DEQUANTIZE_FLOAT16, [half], [index]))
    model.operators[:0] = dequantize


def dynamic_int8(model: TflModel, per_channel_conv: bool = True) -> None:
    """In place: the layers' weights as int8 with symmetric scales; biases stay float."""
    for operator in [op for op in model.operators if op.code in LAYERS and op.code != tflite.BuiltinOperator.DEPTHWISE_CONV_2D]:
        index = operator.inputs[1]
        tensor = model.tensors[index]
        if tensor.data is None or tensor.dtype != tflite.TensorType.FLOAT32:
            continue
        if operator.code == tflite.BuiltinOperator.CONV_2D and tensor.shape[3] != model.tensors[operator.inputs[0]].shape[3]:
            continue  # grouped: no hybrid kernel takes it, so it stays float like the depthwise layers
        weight = np.frombuffer(tensor.data, np.float32).reshape(tensor.shape)
        axis = CHANNEL_AXIS[operator.code]
        # Per-channel hybrid FULLY_CONNECTED is newer than the runtimes boards run (tflite-runtime
        # 2.14 reads only its first scale): per tensor, as the converter writes it.
        per_channel = per_channel_conv and operator.code != tflite.BuiltinOperator.FULLY_CONNECTED
        params = weight_params(weight, per_channel, axis)
        scale = np.broadcast_to(params.scale, (weight.shape[axis],)).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        levels = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        scales = [float(s) for s in (scale if per_channel else scale[:1])]
        tensor.dtype, tensor.data = tflite.TensorType.INT8, levels.tobytes()
        tensor.quant = QuantSpec(scales, [0] * len(scales), axis if per_channel else 0)
        operator.version = HYBRID_VERSIONS[operator.code]
