"""ONNX writer: fp32 and int8 QDQ (QuantizeLinear/DequantizeLinear) models from the IR."""

from edgetune.export.onnx.writer import OPSET, write_onnx

__all__ = ["OPSET", "write_onnx"]
