"""Options of the export stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgetune.errors import InputError
from edgetune.ir.graph import Graph

FORMATS = ("onnx", "tflite")
INPUT_NAME = "input"
TFLITE_IO = ("float", "int8")


@dataclass(frozen=True)
class ExportConfig:
    """Which artifacts to write. ``tflite_io`` None lets the target decide: int8 model input
    and output for microcontrollers, float (through QUANTIZE/DEQUANTIZE) for CPUs."""

    formats: tuple[str, ...] = FORMATS
    tflite_io: str | None = None
    float_tflite: bool = False
    c_array: bool = False  # model_data.cc/.h: the TFLite model as a C array, for TFLite Micro

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise InputError(
                f"unknown export format(s) {', '.join(unknown) or '(none given)'}", f"use a comma-separated list of {', '.join(FORMATS)}"
            )
        if self.c_array and "tflite" not in self.formats:
            raise InputError(
                "--c-array writes the TFLite model as a C array, but the TFLite format is not asked for", "add tflite to --formats"
            )
        if self.tflite_io is not None and self.tflite_io not in TFLITE_IO:
            raise InputError(f"TFLite input/output type {self.tflite_io!r}", f"use one of {', '.join(TFLITE_IO)}")

    def int8_io(self, device_class: str) -> bool:
        return self.tflite_io == "int8" if self.tflite_io is not None else device_class == "mcu"

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self), "formats": list(self.formats)}


def parse_formats(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def input_names(graph: Graph) -> list[str]:
    """Both artifacts' input names: ``input`` for one input; for several, the forward's
    argument names (``input_ids``, ``attention_mask``, ...), in the graph's order."""
    return [INPUT_NAME] if len(graph.inputs) == 1 else list(graph.inputs)
