"""Fine-tune checkpoints: everything a resumed run needs to continue as if never stopped.

A checkpoint holds tensors and plain values only and is read back with
``torch.load(weights_only=True)``, which never runs pickled code. It is written to a temporary
file and renamed, so an interruption while writing leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from edgetune.errors import InputError

VERSION = 1


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"version": VERSION, **state}, temporary)
    os.replace(temporary, path)


def load(path: Path, fingerprint: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"there is no fine-tune checkpoint at {path}", "run without --resume to start afresh")
    try:
        state: dict[str, Any] = torch.load(path, weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path} is not a readable fine-tune checkpoint ({type(exc).__name__})", "delete it and run without --resume"
        ) from None
    if state.get("version") != VERSION or state.get("fingerprint") != fingerprint:
        raise InputError(
            f"the checkpoint at {path} was written by a different fine-tune (model, data or options differ)",
            "resume with the same command, or delete the checkpoint",
        )
    return state
