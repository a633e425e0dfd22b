"""Publish outputs all-or-nothing.

A command that writes a folder (compress, export, finetune, the gate's baseline artifacts)
builds the complete set in a hidden sibling folder, then publishes it in one atomic step:

- when the folder does not exist yet, the sibling is renamed to it;
- when it exists, the two are exchanged (Linux ``renameat2(RENAME_EXCHANGE)``) and the old
  set, now in the sibling, is deleted.

So a crash, a signal or a full disk at any moment leaves either the complete old set or the
complete new set, and never an empty folder. Files edgetune wrote before and does not write
this time (a ``sensitivity.png`` of an earlier run, say) go with the old set; anything else in
the folder (a subfolder of the user's) is carried into the new set as hard links.

Where ``RENAME_EXCHANGE`` is missing (not Linux, or a file system without it), the old folder is
renamed aside first: a crash between the two renames leaves it as ``.NAME.old-*`` beside.
Single files (a baseline document, a JUnit report) are written to a temporary name and renamed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgetune.errors import EdgetuneError, InputError

# Names edgetune writes into an output folder. In an existing folder, these belong to the old
# set and are replaced or dropped; every other entry is the user's and is carried over.
OWN_NAMES = frozenset(
    {
        "model.onnx",
        "model.fp32.onnx",
        "model.int4.onnx",
        "model.tflite",
        "model.fp32.tflite",
        "model.edgetune",
        "report.json",
        "recipe.toml",
        "sensitivity.png",
        "finetune.ckpt",
    }
)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputError(EdgetuneError):
    """The output could not be written; what was there before is unchanged."""

    exit_code = 1


def output_folder(out_dir: str | Path) -> Path:
    """The real path of an output folder, checked before any work: usable, or an InputError now."""
    path = Path(os.path.realpath(out_dir))
    if path.exists() and not path.is_dir():
        raise InputError(f"output path {out_dir} is a file", "give a folder for -o")
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was deleted: it cannot be the output folder
        here = None
    if here is not None and here.is_relative_to(path):
        raise InputError(f"output folder {out_dir} is the current folder or holds it", "give a folder of its own, e.g. -o out/")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot create {out_dir}: {ancestor} is not a writable folder", "choose a writable folder for -o")
    return path


def partial_folder(out_dir: Path) -> Path:
    """Where an unfinished run into ``out_dir`` keeps its state (a fine-tune checkpoint)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def publish_folder(out_dir: str | Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Make ``out_dir`` hold exactly ``files`` (plus the user's own entries), in one atomic step."""
    final = output_folder(out_dir)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".new", dir=final.parent))
        os.chmod(staging, _mode_of(final, 0o777))
    except OSError as exc:
        raise OutputError(f"cannot write {out_dir} ({exc.strerror or exc})", "check the folder's permissions and free space") from None
    try:
        for name, blob in files.items():
            write_new(staging / name, blob)
        if final.is_dir():
            _carry_over(final, staging, set(files))
        _sync(staging)
        if final.is_dir():
            exchange(staging, final)  # the sibling now holds the old set
        else:
            os.rename(staging, final)
        _sync(final.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write {out_dir} ({exc.strerror or exc}); what was there before is unchanged",
            "check the folder's permissions and free space",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: final / name for name in files}


def write_file(path: Path, blob: bytes) -> Path:
    """One file replaced atomically: a temporary name in the same folder, then a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        os.chmod(temporary, _mode_of(path, 0o666))
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})", "check the folder's permissions and free space") from None
    try:
        write_new(Path(temporary), blob)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); what was there before is unchanged",
            "check the folder's permissions and free space",
        ) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def write_new(path: Path, blob: bytes) -> None:
    """Write and flush one file to disk (the single place outputs are written, so tests can fail it)."""
    with open(path, "wb") as stream:
        stream.write(blob)
        stream.flush()
        os.fsync(stream.fileno())


def exchange(first: Path, second: Path) -> None:
    """Swap two folders atomically; where the system cannot, rename the second aside first."""
    rename2 = _renameat2()
    if rename2 is not None:
        if rename2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(second))
    aside = Path(tempfile.mkdtemp(prefix=f".{second.name}.old-", dir=second.parent))
    os.rename(second, aside / "set")
    try:
        os.rename(first, second)
    except BaseException:
        os.rename(aside / "set", second)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _mode_of(path: Path, default: int) -> int:
    """The permissions ``path`` has, or ``default`` less the umask for a new one (temporary
    files and folders are created private)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return default & ~umask


def _renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _carry_over(old: Path, new: Path, written: set[str]) -> None:
    """The user's own entries of ``old`` into ``new``, as hard links (copies where links fail)."""
    for entry in old.iterdir():
        if entry.name in written or entry.name in OWN_NAMES:
            continue
        target = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _sync(folder: Path) -> None:
    """Flush a folder's entries, so that a rename that follows is not reordered before them."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(handle)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(document: Any) -> str:
    """Strict JSON (no NaN or Infinity, which JSON does not have), indented."""
    return json.dumps(finite(document), indent=2, allow_nan=False)


def json_bytes(document: Any) -> bytes:
    return (json_text(document) + "\n").encode()


def cache_dir() -> Path:
    """edgetune's cache (the emulated board, captured graphs): ``$EDGETUNE_CACHE``, else
    ``~/.cache/edgetune`` of the user, also under ``sudo`` (the board is built as root but used
    as the user who asked for it)."""
    configured = os.environ.get("EDGETUNE_CACHE")
    if configured:
        return Path(configured)
    user = os.environ.get("SUDO_USER")
    if user and hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path(os.path.expanduser(f"~{user}")) / ".cache" / "edgetune"
    return Path.home() / ".cache" / "edgetune"
