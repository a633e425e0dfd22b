"""Options of the quantization stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgetune.errors import InputError
from edgetune.quantize.observers import ALL_METHODS

# Post-training techniques (edgetune.quantize.ptq), in the order they run; "best" chooses.
PTQ_TECHNIQUES = ("equalize", "adaround", "bias-correct")
DEFAULT_PTQ = ("bias-correct",)


FALLBACKS = ("float", "int16")
# A model with LayerNorm (quantize/stream.py): its stream in float with outlier channels split,
# with SmoothQuant's migration into the weights before the split, in float only, or every tensor
# int8 as in a CNN.
STREAMS = ("split", "smooth", "float", "off")
# int8: static, full-integer, calibrated. The others calibrate nothing: dynamic-int8 stores int8
# weights and quantizes activations per inference; float16 stores float16 weights.
MODES = ("int8", "dynamic-int8", "float16")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: observer method, weight granularity, calibration sample count, and
    the post-training techniques around calibration with their time budget (seconds)."""

    method: str = "mse"
    per_channel: bool = True
    samples: int = 128
    batch_size: int = 32
    percentile: float = 99.99
    ptq: tuple[str, ...] = field(default=DEFAULT_PTQ)
    ptq_budget: float = 60.0
    weight_bits: int = 8  # 4: 4-bit values in int8 storage (accuracy and size planning)
    layer_bits: tuple[tuple[str, int], ...] = ()  # (layer or module, 4 or 8): mixed precision, in that order
    accuracy_target: str | None = None  # "30dB" or "99%": layers fall back until it holds
    fallback: str = "float"  # what those layers fall back to: float, or int16 activations (16x8)
    keep_float: tuple[str, ...] = ()  # layers the user keeps in float, in both artifacts
    mode: str = "int8"  # one of MODES
    stream: str = "split"  # one of STREAMS

    @property
    def calibrated(self) -> bool:
        return self.mode == "int8"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"quantization mode {self.mode!r} is unknown", f"use one of {', '.join(MODES)}")
        if not self.calibrated:
            self._check_uncalibrated()
        if self.method not in ALL_METHODS:
            raise InputError(f"calibration method {self.method!r} is unknown", f"use one of {', '.join(ALL_METHODS)}")
        if self.samples < 1:
            raise InputError(f"{self.samples} calibration samples", "use at least 1 (128 is typical)")
        if self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size}", "use a positive batch size")
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile {self.percentile}", "use a value in (50, 100], e.g. 99.99")
        unknown = [name for name in self.ptq if name not in (*PTQ_TECHNIQUES, "best")]
        if unknown:
            raise InputError(f"post-training technique {unknown[0]!r} is unknown", f"use best, none or some of {','.join(PTQ_TECHNIQUES)}")
        if "best" in self.ptq and len(self.ptq) > 1:
            raise InputError("--ptq best chooses the techniques itself", "give best alone, or list the techniques")
        odd = [bits for bits in (self.weight_bits, *(bits for _, bits in self.layer_bits)) if bits not in (4, 8)]
        if odd:
            raise InputError(f"{odd[0]}-bit weights", "use 8 (int8) or 4 (4-bit values in int8 storage)")
        if self.accuracy_target is not None:
            from edgetune.quantize.fallback import AccuracyTarget

            AccuracyTarget.parse(self.accuracy_target)
        if self.stream not in STREAMS:
            raise InputError(f"stream {self.stream!r} is unknown", f"use one of {', '.join(STREAMS)}")
        if self.fallback not in FALLBACKS:
            raise InputError(f"fallback precision {self.fallback!r} is unknown", f"use one of {', '.join(FALLBACKS)}")
        if self.keep_float and self.accuracy_target is not None:
            raise InputError(
                "--keep-float and --accuracy-target both choose float layers", "give one: the layers, or the target that finds them"
            )
        if self.ptq_budget < 0:
            raise InputError(f"PTQ budget {self.ptq_budget} s", "give a budget of 0 seconds or more")

    def _check_uncalibrated(self) -> None:
        """What only the calibrated int8 mode has is refused in the others, by option."""
        given = {
            "--ptq": self.ptq not in ((), DEFAULT_PTQ),
            "--accuracy-target": self.accuracy_target is not None,
            "--keep-float": bool(self.keep_float),
            "--weight-bits 4": self.weight_bits != 8,
            "quantize.layer_bits": bool(self.layer_bits),
            f"--stream {self.stream}": self.stream != "split",
        }
        refused = [option for option, set_ in given.items() if set_]
        if refused:
            raise InputError(
                f"{refused[0]} works on the calibrated int8 model, not with --mode {self.mode}", f"drop {refused[0]}, or use --mode int8"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            **asdict(self),
            "ptq": list(self.ptq),
            "keep_float": list(self.keep_float),
            "layer_bits": dict(self.layer_bits),
        }

    @property
    def four_bit(self) -> bool:
        """Some weights take 4-bit values: all (--weight-bits 4) or some layers' (layer_bits)."""
        return self.weight_bits == 4 or any(bits == 4 for _, bits in self.layer_bits)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QuantConfig:
        fields = {k: v for k, v in raw.items() if k != "version"}
        fields["keep_float"] = tuple(fields.get("keep_float", ()))
        fields["layer_bits"] = tuple((str(name), int(bits)) for name, bits in dict(fields.get("layer_bits", {})).items())
        if "ptq" in fields:
            fields["ptq"] = tuple(fields["ptq"])
        elif raw.get("version", 1) < 2:
            fields["ptq"] = ()  # written before the techniques existed
        return cls(**fields)


def parse_ptq(text: str) -> tuple[str, ...]:
    """``equalize,bias-correct``, ``best`` or ``none`` to the techniques' names."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    return () if names in ((), ("none",)) else names
