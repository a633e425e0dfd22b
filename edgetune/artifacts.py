"""Write output files atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgetune.errors import InputError


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} is a file", "give a folder for -o")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out_dir} ({exc.strerror})", "choose a writable folder for -o") from None


def write_files(out_dir: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Write all files or none: every file goes to a temporary name first, then all are renamed."""
    prepare_out_dir(out_dir)
    staged: list[tuple[str, Path]] = []
    try:
        for name, blob in files.items():
            handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            with os.fdopen(handle, "wb") as stream:
                stream.write(blob)
            staged.append((name, Path(temp_name)))
        for name, temp in staged:
            os.replace(temp, out_dir / name)
    finally:
        for _, temp in staged:
            temp.unlink(missing_ok=True)
    return {name: out_dir / name for name in files}


def json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=False) + "\n").encode()
