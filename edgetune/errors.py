"""One error family for everything a user can get wrong.

Every error carries what went wrong and a hint for what to do; the CLI turns it into a
single stderr line ``error: <message>; <hint>`` and an exit code.
"""

from __future__ import annotations


class EdgetuneError(Exception):
    """Base of all errors edgetune reports to users."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())


class InputError(EdgetuneError):
    """A model, data set, target or option the user gave cannot be used."""

    exit_code = 2


class UnsupportedOpsError(InputError):
    """The graph holds operators an exporter or the capture cannot handle."""

    def __init__(self, ops: list[str], where: str) -> None:
        names = ", ".join(sorted(set(ops)))
        super().__init__(
            f"{where} does not support these operators: {names}",
            "replace them in the model, or open an issue naming the operators",
        )
        self.ops = sorted(set(ops))


class RuntimeFailure(EdgetuneError):
    """A runtime (ONNX Runtime, TFLite) failed on an artifact edgetune produced or loaded."""

    exit_code = 1
