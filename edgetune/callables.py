"""Resolve ``path/to/file.py:name`` and ``package.module:name`` to a Python callable."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgetune.errors import InputError

_SPEC = re.compile(r"^(?P<target>[^:]+(?:\.py)?):(?P<name>[A-Za-z_][A-Za-z0-9_.]*)$")


def looks_like_callable(spec: str) -> bool:
    match = _SPEC.match(spec)
    if not match:
        return False
    target = match["target"]
    return target.endswith(".py") or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", target) is not None


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    match = _SPEC.match(spec)
    if not match:
        raise InputError(f"{what} {spec!r} is not of the form file.py:name or module:name", "check the spelling")
    target, name = match["target"], match["name"]
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"{what} file {path} does not exist", "check the path")
        module_name = f"_edgetune_user_{abs(hash(str(path.resolve())))}"
        spec_obj = importlib.util.spec_from_file_location(module_name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise InputError(f"cannot import {path}", "give a Python source file")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        # The user's file may import siblings next to it.
        sys.path.insert(0, str(path.resolve().parent))
        try:
            with user_code(f"importing {path}", "fix the file or run with --debug"):
                spec_obj.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise InputError(
                f"cannot import module {target!r}: {type(exc).__name__}: {exc}", "check that it is installed and on PYTHONPATH"
            ) from exc
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{target} has no attribute {name!r}", f"check the {what} name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{spec} is not callable", f"point the {what} at a function or class")
    return obj  # type: ignore[no-any-return]


@contextmanager
def user_code(what: str, hint: str) -> Iterator[None]:
    """Run a user's code: whatever it raises, ``sys.exit`` included, becomes one InputError
    that names ``what`` ("calling net.py:build", say). Ctrl-C stays an interruption."""
    try:
        yield
    except InputError:
        raise
    except SystemExit as exc:
        raise InputError(f"{what} called sys.exit({exc.code!r})", hint) from None
    except Exception as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise InputError(f"{what} failed: {type(exc).__name__}: {text}", hint) from exc
