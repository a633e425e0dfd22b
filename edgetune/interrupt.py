"""Ctrl-C as a request: a flag that a long loop reads between steps, so that it ends with a
whole result (a second Ctrl-C interrupts at once)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class CtrlC:
    """Ctrl-C raises KeyboardInterrupt at once, as by default, and is also remembered: should
    the exception be lost (raised while a finalizer runs, where Python only prints it and goes
    on), ``check`` raises it again at the loop's next safe point."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None
        self._hook: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def _unraisable(self, unraisable: Any) -> None:
        """The lost KeyboardInterrupt is not printed: ``check`` raises it again."""
        if not (self.seen and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self._hook(unraisable)

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            sys.unraisablehook = self._hook
