"""Options of the pruning stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgetune.errors import InputError

CRITERIA = ("l2", "l1")


@dataclass(frozen=True)
class PruneConfig:
    """Structured channel pruning: remove ``ratio`` of the prunable channels of every group."""

    ratio: float
    criterion: str = "l2"
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise InputError(f"pruning ratio {self.ratio} is outside [0, 1)", "give the share of channels to remove, e.g. channel:0.5")
        if self.criterion not in CRITERIA:
            raise InputError(f"pruning criterion {self.criterion!r} is unknown", f"use one of {', '.join(CRITERIA)}")
        if self.channel_multiple < 1:
            raise InputError(f"channel multiple {self.channel_multiple}", "use a positive multiple")

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "kind": "channel", **asdict(self)}


def parse_prune(text: str, channel_multiple: int = 1) -> PruneConfig:
    """``channel:0.5`` or ``channel:0.5:l1``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] != "channel":
        raise InputError(f"--prune {text!r} is not like channel:0.5[:l1|l2]", "give channel:RATIO, optionally :CRITERION")
    try:
        ratio = float(parts[1])
    except ValueError:
        raise InputError(f"--prune ratio {parts[1]!r} is not a number", "e.g. channel:0.5") from None
    return PruneConfig(ratio, parts[2] if len(parts) == 3 else "l2", channel_multiple)
