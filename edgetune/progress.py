"""Progress on stderr: a live line on a terminal, a line per stage in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[int, int, str], None]


class StderrProgress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.started = 0.0
        self.extra = ""
        self.seen: dict[str, int] = {}  # how often each label has started
        self.finished = ""  # the label of the stage that ended last

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        if label == self.finished and done >= total:
            return  # the stage that just ended, reported as ended again
        self.finished = ""
        if label != self.label:
            self.label, self.started = label, time.perf_counter()
            self.seen[label] = self.seen.get(label, 0) + 1
            if not self.tty:  # a log: one line as a stage starts, one as it ends (the total may be a share, not steps)
                print(f"{self._name()}: started", file=sys.stderr, flush=True)
        if self.tty:
            width = 24
            filled = int(width * done / max(total, 1))
            bar = "#" * filled + "." * (width - filled)
            extra = f"  {self.extra}" if self.extra else ""
            print(f"\r{label:<24} [{bar}] {done}/{total}{extra}\033[K", end="", file=sys.stderr, flush=True)
        if done >= total:
            elapsed = time.perf_counter() - self.started
            extra = f" ({self.extra})" if self.extra else ""
            if self.tty:
                print(f" {elapsed:.1f}s", file=sys.stderr, flush=True)
            else:
                print(f"{self._name()}: done in {elapsed:.1f}s{extra}", file=sys.stderr, flush=True)
            self.label, self.extra, self.finished = "", "", label

    def _name(self) -> str:
        """The running stage's label, numbered when it runs again (calibration trials, repetitions)."""
        count = self.seen.get(self.label, 1)
        return self.label if count == 1 else f"{self.label} (#{count})"

    def detail(self, text: str) -> None:
        """Text shown after the bar of the running stage (remaining budget, loss, metric)."""
        self.extra = text

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


def silent(done: int, total: int, label: str) -> None:
    """A progress callback that shows nothing."""
