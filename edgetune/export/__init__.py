"""Export: writers that turn the quantized graph into deployable artifacts.

``edgetune.export.onnx`` writes the fp32 model and the int8 QDQ model; ``edgetune.export.tflite``
the int8 (and float) flatbuffer. Each writer has one function per op family, registered by IR
op name. The entry points: :func:`write_onnx` and :func:`write_tflite`.
"""

from edgetune.export.config import ExportConfig
from edgetune.export.onnx import write_onnx
from edgetune.export.tflite import write_tflite

__all__ = ["ExportConfig", "write_onnx", "write_tflite"]
