"""Quantize: calibrate activation ranges and attach int8 parameters (TFLite int8 numerics)
to the captured graph. Both exporters read these parameters unchanged."""

from edgetune.quantize.calibrate import CalibrationRecord, calibrate
from edgetune.quantize.config import QuantConfig

__all__ = ["CalibrationRecord", "QuantConfig", "calibrate"]
