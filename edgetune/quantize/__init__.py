"""Quantize: calibrate activation ranges and attach int8 parameters (TFLite int8 numerics)
to the captured graph, with the post-training techniques around calibration. Both exporters
read these parameters unchanged. The entry point: :func:`quantize` (``ptq.py``)."""

from edgetune.quantize.calibrate import CalibrationRecord, calibrate
from edgetune.quantize.config import QuantConfig
from edgetune.quantize.ptq import quantize

__all__ = ["CalibrationRecord", "QuantConfig", "calibrate", "quantize"]
