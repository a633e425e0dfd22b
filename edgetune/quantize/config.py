"""Options of the quantization stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgetune.errors import InputError
from edgetune.quantize.observers import METHODS


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: observer method, weight granularity, calibration sample count."""

    method: str = "mse"
    per_channel: bool = True
    samples: int = 128
    batch_size: int = 32
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"calibration method {self.method!r} is unknown", f"use one of {', '.join(METHODS)}")
        if self.samples < 1:
            raise InputError(f"{self.samples} calibration samples", "use at least 1 (128 is typical)")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}", "use a positive batch size")
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile {self.percentile}", "use a value in (50, 100], e.g. 99.99")

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QuantConfig:
        fields = {k: v for k, v in raw.items() if k != "version"}
        return cls(**fields)
