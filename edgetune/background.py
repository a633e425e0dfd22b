"""Work that runs in a thread beside the main one, where it waits on something else (decoding
images while the model is built, compressing bytes while the runtimes evaluate): the result,
or the exception, is handed over when the main thread asks for it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def in_background(work: Callable[[], T], name: str) -> Future[T]:
    """Start ``work`` in a daemon thread (an interrupted run does not wait for it)."""
    future: Future[T] = Future()

    def target() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # raised again where the result is read
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
