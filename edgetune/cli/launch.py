"""The console entry point. Before anything heavy is imported, a command that computes on
large arrays (compress, finetune, search, gate, eval) starts over once in the same process (``exec``)
with glibc's malloc asking for transparent huge pages.

Why: ONNX Runtime's arenas and torch's tensors are fresh allocations of hundreds of MB, and on
a virtual machine each 4 KiB page's first touch is a fault the kernel serves. A warm compress of
EfficientNet-Lite0 took 1.1 million page faults and 1.7 s of kernel time; with 2 MiB pages,
about 90,000 and 0.8 s, about 0.4-1 s less wall time, the same peak memory, the same bytes.

glibc reads its tunables only when a process starts, hence the ``exec``. It is done only where
it can help: glibc 2.35 or newer (the ``glibc.malloc.hugetlb`` tunable), and the kernel's
transparent huge pages in ``madvise`` mode (in ``always`` mode every process has them already;
in ``never`` mode none can). ``EDGETUNE_HUGE_PAGES=off`` keeps the process as it started.
Child processes (benchmark agents, smoke runs) get the environment as the user gave it, so
latency and memory measured in them are not changed by this.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SWITCH = "EDGETUNE_HUGE_PAGES"
TUNABLES = "GLIBC_TUNABLES"
HUGE_PAGES = "glibc.malloc.hugetlb=1"
ORIGINAL = "_EDGETUNE_GLIBC_TUNABLES"  # what GLIBC_TUNABLES held before the exec ("-": unset)
HEAVY = {"compress", "finetune", "search", "gate", "eval"}
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def main() -> None:
    if ORIGINAL in os.environ:
        _restore_environment()
    elif wants_huge_pages(sys.argv, os.environ):
        _exec_with_huge_pages()
    from edgetune.cli.main import main as run_cli

    run_cli()


def wants_huge_pages(argv: list[str], environ: os._Environ[str] | dict[str, str]) -> bool:
    if environ.get(SWITCH, "").lower() in ("0", "off", "no", "false"):
        return False
    if "glibc.malloc.hugetlb" in environ.get(TUNABLES, ""):
        return False  # the user chose already
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    if command not in HEAVY or "--help" in argv or "-h" in argv:
        return False
    return _glibc_at_least(2, 35) and _thp_mode() == "madvise"


def _glibc_at_least(major: int, minor: int) -> bool:
    try:
        name, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        found = tuple(int(part) for part in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr (macOS, Windows, musl)
        return False
    return name == "glibc" and found >= (major, minor)


def _thp_mode() -> str | None:
    """The bracketed word of the kernel's setting: always, madvise or never."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _exec_with_huge_pages() -> None:
    environ = dict(os.environ)
    given = environ.get(TUNABLES)
    environ[ORIGINAL] = "-" if given is None else given
    environ[TUNABLES] = f"{given}:{HUGE_PAGES}" if given else HUGE_PAGES
    argv = list(sys.orig_argv)  # the interpreter's own options (-X, -W) too
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, environ)
    except OSError:
        pass  # cannot exec (a frozen interpreter, a sandbox): go on as started


def _restore_environment() -> None:
    """After the exec: the children of this process see the environment the user gave."""
    given = os.environ.pop(ORIGINAL)
    if given == "-":
        os.environ.pop(TUNABLES, None)
    else:
        os.environ[TUNABLES] = given
