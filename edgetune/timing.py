"""Where a run's time goes: named steps nested under the running stage, for ``compress
--profile`` and the report's ``profile`` block.

A step is opened with :func:`step` wherever the work is done (``with step("torch.export"):``);
outside a profiled run it costs one perf_counter call. Steps nest: a step opened inside
another is its child. :func:`process_times` gives what happened before edgetune ran any
command: the interpreter's start-up and the imports up to the command.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

IMPORTED = time.perf_counter()  # when edgetune was first imported (edgetune/__init__ imports this module)
_IMPORTED_BOOT = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else None  # the clock /proc counts on


@dataclass
class Span:
    """One timed step and the steps inside it."""

    name: str
    seconds: float = 0.0
    calls: int = 0
    children: list[Span] = field(default_factory=list)

    def child(self, name: str) -> Span:
        """The child of that name: a step run again (per batch, per layer) adds up in one span."""
        for span in self.children:
            if span.name == name:
                return span
        span = Span(name)
        self.children.append(span)
        return span

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "seconds": round(self.seconds, 4)}
        if self.calls > 1:
            entry["calls"] = self.calls
        if self.children:
            entry["steps"] = [c.to_dict() for c in self.children]
        return entry


_local = threading.local()  # each thread's open steps: a step in a helper thread is its own


def _stack() -> list[Span]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack  # type: ignore[no-any-return]


F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def stage(name: str) -> Iterator[Span]:
    """The root span of one stage; the steps opened while it runs nest under it."""
    root = Span(name)
    _stack().append(root)
    started = time.perf_counter()
    try:
        yield root
    finally:
        root.seconds, root.calls = time.perf_counter() - started, 1
        _stack().remove(root)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time the enclosed work as ``name`` under the innermost open step (nothing outside a stage)."""
    stack = _stack()
    if not stack:
        yield
        return
    span = stack[-1].child(name)
    stack.append(span)
    started = time.perf_counter()
    try:
        yield
    finally:
        span.seconds += time.perf_counter() - started
        span.calls += 1
        stack.pop()


def process_times(command_started: float) -> dict[str, float | None]:
    """``startup``: from the process's start to edgetune's first import (the interpreter and
    whatever ran before), None where the kernel does not tell the start (off Linux);
    ``imports``: from there to ``command_started`` (a perf_counter reading); ``huge_pages``:
    see :func:`malloc_huge_pages`."""
    return {"startup": _startup_seconds(), "imports": round(command_started - IMPORTED, 4), "huge_pages": malloc_huge_pages()}


def malloc_huge_pages() -> bool | None:
    """Whether glibc's malloc asks for transparent huge pages in this process: its tunables
    are read from the environment the process started with (edgetune.cli.launch sets them for
    the heavy commands); None off Linux."""
    try:
        environ = Path(f"/proc/{os.getpid()}/environ").read_bytes()
    except OSError:
        return None
    # glibc parses GLIBC_TUNABLES in place, writing a NUL over each colon: search the whole block.
    return b"GLIBC_TUNABLES=" in environ and b"glibc.malloc.hugetlb=1" in environ


def _startup_seconds() -> float | None:
    """The process's age at edgetune's import: /proc gives its start in clock ticks since boot."""
    if _IMPORTED_BOOT is None:
        return None
    try:
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22 (starttime), counted after the command name
    except (OSError, ValueError, IndexError):
        return None
    return round(max(_IMPORTED_BOOT - ticks / os.sysconf("SC_CLK_TCK"), 0.0), 3)


def timed(name: str) -> Callable[[F], F]:
    """Decorate a function so that each call is a step of that name."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with step(name):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
