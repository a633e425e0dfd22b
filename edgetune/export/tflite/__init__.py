"""TFLite writer: int8 (and float) flatbuffers from the same quantized graph as the ONNX artifact.

No TensorFlow: the flatbuffer is written with the TFLite schema's generated bindings.
"""

from edgetune.export.config import INPUT_NAME
from edgetune.export.tflite.writer import OUTPUT_NAME, write_tflite

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "write_tflite"]
