"""Layer names in options: a layer's own name, or a module's path for every layer inside it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from edgetune.errors import InputError


def inside(layer: str, name: str) -> bool:
    """``layer`` is ``name``, a later call of it (``act#2``), or lies in the module ``name``
    (``block`` holds ``block.conv1``)."""
    return layer == name or layer.startswith((f"{name}.", f"{name}#"))


def select(layers: Sequence[str], names: Iterable[str], option: str, what: str = "layer") -> list[str]:
    """The layers that ``names`` pick, in graph order; a name that picks none is one error that
    suggests the nearest layer or module."""
    chosen: set[str] = set()
    for name in names:
        found = [layer for layer in layers if inside(layer, name)]
        if not found:
            raise unknown(name, layers, option, what)
        chosen.update(found)
    return [layer for layer in layers if layer in chosen]


def unknown(name: str, layers: Sequence[str], option: str, what: str = "layer") -> InputError:
    modules = {layer.rsplit(".", depth)[0] for layer in layers for depth in range(1, layer.count(".") + 1)}
    modules |= {layer.split("#")[0] for layer in layers}
    close = difflib.get_close_matches(name, [*layers, *sorted(modules)], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"the {what}s are {', '.join(layers[:6])}{', ...' if len(layers) > 6 else ''}"
    return InputError(f"{option}: the model has no {what} named {name}", hint)
