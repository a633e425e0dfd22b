"""Options of the pruning stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from edgetune.errors import InputError
from edgetune.numbers import parse_finite

KINDS = ("channel", "magnitude")
CRITERIA = ("l2", "l1", "taylor", "obd")
ALLOCATIONS = ("uniform", "global")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how much.

    ``channel``: remove ``ratio`` of the channels (structured; smaller dense artifacts), and of
    a transformer's feed-forward neurons and attention heads (``heads``: another share for heads).
    ``drop_layers``: drop that many whole encoder layers before (``layers:N``, alone or joined
    as ``layers:2+channel:0.5``).
    ``magnitude``: zero ``ratio`` of the conv and linear weights (unstructured; only the
    compressed artifact gets smaller). ``allocation``: the same share in every group or
    layer (uniform), or one threshold across all of them (global).
    """

    ratio: float
    criterion: str = "l2"
    channel_multiple: int = 1
    skip_unsupported: bool = False
    kind: str = "channel"
    allocation: str = "uniform"
    protect: tuple[str, ...] = ()  # layer names kept whole; "first" names the first conv
    overrides: tuple[tuple[str, float], ...] = ()  # (layer name, ratio) for that layer's group
    reestimate: bool = True  # give folded BatchNorm layers their channel statistics back afterwards
    heads: float | None = None  # the share of attention heads to remove (None: ``ratio``, as for every other group)
    drop_layers: int = 0  # whole transformer encoder layers to drop first (``layers.py``)

    @property
    def override_map(self) -> dict[str, float]:
        return dict(self.overrides)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"pruning kind {self.kind!r} is unknown", f"use one of {', '.join(KINDS)}")
        if not 0.0 <= self.ratio < 1.0:
            raise InputError(f"pruning ratio {self.ratio} is outside [0, 1)", f"give the share to remove, e.g. {self.kind}:0.5")
        if self.criterion not in CRITERIA:
            raise InputError(f"pruning criterion {self.criterion!r} is unknown", f"use one of {', '.join(CRITERIA)}")
        if self.allocation not in ALLOCATIONS:
            raise InputError(f"pruning allocation {self.allocation!r} is unknown", f"use one of {', '.join(ALLOCATIONS)}")
        if self.channel_multiple < 1:
            raise InputError(f"channel multiple {self.channel_multiple}", "use a positive multiple")
        if self.drop_layers < 0:
            raise InputError(f"layers:{self.drop_layers} is negative", "give the number of encoder layers to drop, e.g. layers:2")
        if self.heads is not None and not 0.0 <= self.heads < 1.0:
            raise InputError(f"head pruning ratio {self.heads} is outside [0, 1)", "give the share of heads to remove, e.g. 0.25")
        for layer, ratio in self.overrides:
            if not 0.0 <= ratio < 1.0:
                raise InputError(f"pruning ratio {ratio} for layer {layer} is outside [0, 1)", "give NAME=RATIO with 0 <= RATIO < 1")

    def to_dict(self) -> dict[str, Any]:
        return {"version": 2, **asdict(self)}


def parse_overrides(items: tuple[str, ...] | list[str]) -> tuple[tuple[str, float], ...]:
    """``NAME=RATIO`` strings to (name, ratio) pairs."""
    pairs = []
    for item in items:
        name, _, value = item.partition("=")
        pairs.append((name.strip(), parse_finite(value, f"--prune-layer {item!r} ratio", "--prune-layer conv2d_3=0.25")))
    return tuple(pairs)


def parse_prune(
    text: str,
    channel_multiple: int = 1,
    skip_unsupported: bool = False,
    allocation: str = "uniform",
    protect: tuple[str, ...] = (),
    overrides: tuple[tuple[str, float], ...] = (),
    reestimate: bool = True,
    heads: float | None = None,
) -> PruneConfig:
    """``channel:0.5``, ``channel:0.5:l1``, ``magnitude:0.8``, ``layers:2``, or ``layers:2`` joined
    to one of the others with ``+`` (``layers:2+channel:0.5``)."""
    items = [item.strip() for item in text.split("+")]
    dropped = [item for item in items if item.startswith("layers:")]
    rest = [item for item in items if not item.startswith("layers:")]
    drop = 0
    if len(dropped) > 1 or len(rest) > 1 or len(items) > 2:
        raise InputError(f"--prune {text!r} joins more than layers:N and one KIND:RATIO", "write e.g. layers:2+channel:0.5")
    if dropped:
        count = dropped[0].partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--prune {dropped[0]!r} is not a number of layers", "write layers:N, e.g. layers:2")
        drop = int(count)
        if not rest:
            config = PruneConfig(
                0.0, "l2", channel_multiple, skip_unsupported, "channel", allocation, protect, overrides, reestimate, heads
            )
            return replace(config, drop_layers=drop)
    text = rest[0]
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in KINDS or (parts[0] == "magnitude" and len(parts) == 3):
        raise InputError(f"--prune {text!r} is not like channel:0.5[:l1|l2] or magnitude:0.8", "give KIND:RATIO")
    ratio = parse_finite(parts[1], "--prune ratio", f"{parts[0]}:0.5")
    criterion = parts[2] if len(parts) == 3 else "l2"
    config = PruneConfig(ratio, criterion, channel_multiple, skip_unsupported, parts[0], allocation, protect, overrides, reestimate, heads)
    return replace(config, drop_layers=drop)
