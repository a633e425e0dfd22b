"""A keyed registry of handlers that refuses duplicates (op lowerings, writers, kernels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

H = TypeVar("H", bound=Callable[..., Any])


class Registry(Generic[H]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._handlers: dict[Any, H] = {}

    def register(self, *keys: Any) -> Callable[[H], H]:
        def add(handler: H) -> H:
            for key in keys:
                if key in self._handlers:
                    raise ValueError(f"{self.what}: {key} is already handled by {self._handlers[key].__name__}")
                self._handlers[key] = handler
            return handler

        return add

    def __getitem__(self, key: Any) -> H:
        return self._handlers[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._handlers

    def missing(self, keys: Iterable[Any]) -> list[str]:
        """The keys without a handler, as sorted unique strings."""
        return sorted({str(key) for key in keys if key not in self._handlers})
