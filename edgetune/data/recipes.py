"""Data recipes: ``calibration/<name>.toml`` files that say where samples come from and
how they are preprocessed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.resources import bundled_dir, read_toml, resolve_named

MAX_SIDE = 8192  # pixels: a resize or crop beyond this is a typo, and would exhaust memory


@dataclass(frozen=True)
class Preprocess:
    resize: int | None = None
    crop: int | None = None
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR", "L"):
            raise InputError(f"channel_order {self.channel_order!r} is unknown", "use RGB, BGR or L")
        if self.layout not in ("NCHW", "NHWC"):
            raise InputError(f"layout {self.layout!r} is unknown", "use NCHW or NHWC")
        for key, size in (("resize", self.resize), ("crop", self.crop)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIDE):
                raise InputError(f"{key} {size!r} in the recipe is not a size in pixels", f"give a whole number from 1 to {MAX_SIDE}")
        numbers = (self.scale, *self.mean, *self.std)
        if not all(math.isfinite(v) for v in numbers):
            raise InputError("the recipe's scale, mean or std is not a finite number", "give finite numbers")
        if any(s == 0 for s in self.std):
            raise InputError("a std of 0 in the recipe", "give non-zero standard deviations")

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "channel_order": self.channel_order,
            "layout": self.layout,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    description: str = ""
    shape: tuple[int, ...] | None = None
    labels: tuple[str, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    split: dict[str, Any] = field(default_factory=dict)
    crops: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def bundled_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(bundled_dir("calibration").glob("*.toml"))}


def load_recipe(name_or_path: str) -> Recipe:
    path = resolve_named(name_or_path, bundled_recipes(), "data recipe")
    raw = read_toml(path, "data recipe")
    pre = raw.get("preprocess", {})
    if not isinstance(pre, dict):
        raise InputError(f"data recipe {path} has no [preprocess] table", "write preprocessing keys under [preprocess]")
    try:
        preprocess = Preprocess(
            resize=pre.get("resize"),
            crop=pre.get("crop"),
            channel_order=pre.get("channel_order", "RGB"),
            layout=pre.get("layout", "NCHW"),
            scale=float(pre.get("scale", 1.0)),
            mean=tuple(float(v) for v in pre.get("mean", [0.0])),
            std=tuple(float(v) for v in pre.get("std", [1.0])),
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"data recipe {path} has a bad [preprocess] value ({exc})", "fix the file") from None
    shape = raw.get("shape")
    try:
        return _recipe(raw, path, preprocess, shape)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"data recipe {path} has a bad value ({exc})", "fix the file") from None


def _recipe(raw: dict[str, Any], path: Path, preprocess: Preprocess, shape: Any) -> Recipe:
    return Recipe(
        name=str(raw.get("name", path.stem)),
        source=str(raw.get("source", "folder")),
        description=str(raw.get("description", "")),
        shape=tuple(int(d) for d in shape) if shape else None,
        labels=tuple(str(v) for v in raw.get("labels", [])),
        preprocess=preprocess,
        split=dict(raw.get("split", {})),
        crops=dict(raw.get("crops", {})),
        path=path,
    )
