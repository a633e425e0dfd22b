"""An emulated board: the real aarch64 builds of LiteRT and ONNX Runtime run under qemu
user-mode emulation, on the CPU core of the target, so that artifacts can be checked on the
very kernels a Raspberry Pi uses before a board is in hand. Emulated timings say nothing about
speed: this device checks results only.

The board is a folder in the cache (``$EDGETUNE_CACHE``, default ``~/.cache/edgetune``), made by
``edgetune device setup qemu`` (``qemu_setup.py``)::

    qemu/bookworm-arm64/
      rootfs/            Debian's minimal arm64 userland with python3 (debootstrap, unpacked)
      site/              aarch64 wheels of numpy, ai-edge-litert and onnxruntime
      cores/cortex-a72/  the userland seen through links, plus the core's own proc/cpuinfo
      board.json         what was installed, and when

Facts this rests on (qemu 7.2, as Debian bookworm ships it):

- ``qemu-aarch64-static -cpu CORE -L ROOT ROOT/usr/bin/python3.11`` runs the arm64 Python with
  no binfmt_misc and no chroot: ``-L`` makes the program's absolute paths look in ROOT first.
- qemu 7.2 shows the program the host's x86 ``/proc/cpuinfo``, and LiteRT's CPU detection
  crashes on it. A ``proc/cpuinfo`` under ``-L`` answers instead; it must describe the same
  core as ``-cpu`` (an A76 cpuinfo under an A72 makes XNNPACK use dot-product instructions the
  A72 lacks: "Illegal instruction"). Hence one ``cores/<core>`` folder per core.
- ``-cpu max`` gives wrong int8 results from XNNPACK: the board's core is always pinned.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.artifacts import cache_dir
from edgetune.errors import InputError
from edgetune.profile.measure import AGENT, parse_agent_output
from edgetune.targets import load_target

QEMU = "qemu-aarch64-static"
BOARD_NAME = "bookworm-arm64"
PYTHON = "usr/bin/python3.11"


@dataclass(frozen=True)
class Core:
    """What ``/proc/cpuinfo`` says of one core on Linux (arm64 format), and qemu's name for it."""

    qemu_cpu: str
    part: str
    variant: str
    revision: int
    features: str

    def cpuinfo(self, processors: int) -> str:
        entry = (
            "processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n"
        )
        fields = {"features": self.features, "variant": self.variant, "part": self.part, "revision": self.revision}
        return "".join(entry.format(index=index, **fields) for index in range(processors))


# Part numbers and feature lists as Linux prints them on the boards (Arm's MIDR part numbers:
# Cortex-A72 0xd08, Cortex-A76 0xd0b). A new core plugs in here and in a target's `core` field.
CORES: dict[str, Core] = {
    "cortex-a72": Core("cortex-a72", "0xd08", "0x0", 3, "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": Core(
        "cortex-a76",
        "0xd0b",
        "0x4",
        1,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    ),
}


def board_dir() -> Path:
    return cache_dir() / "qemu" / BOARD_NAME


@dataclass(frozen=True)
class QemuDevice:
    target: str
    core: Core

    @classmethod
    def parse(cls, device: str) -> QemuDevice:
        """``qemu:<target>``, the target's profile naming its core (``core = "cortex-a72"``)."""
        name = device.removeprefix("qemu:")
        if not name:
            raise InputError(f"device {device!r} names no target", "use qemu:raspberry-pi-4 or qemu:raspberry-pi-5")
        target = load_target(name)
        if target.core not in CORES:
            emulated = ", ".join(f"qemu:{t}" for t in emulated_targets())
            raise InputError(f"target {target.name} has no emulated core (core = {target.core!r})", f"use {emulated}")
        return cls(target.name, CORES[target.core])

    def __str__(self) -> str:
        return f"qemu:{self.target} ({self.core.qemu_cpu})"


def emulated_targets() -> list[str]:
    from edgetune.targets import all_targets

    return [t.name for t in all_targets() if t.core in CORES]


def board_ready() -> str | None:
    """None when the board can run; otherwise what is missing, as one sentence."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed"
    if not (board_dir() / "board.json").is_file():
        return f"no emulated board in {board_dir()}"
    return None


def core_root(core: Core) -> Path:
    """The ``-L`` folder for ``core``: the userland through links, with the core's own cpuinfo."""
    root = board_dir() / "cores" / core.qemu_cpu
    if not (root / "proc" / "cpuinfo").is_file():
        raise InputError(f"the emulated board in {board_dir()} has no {core.qemu_cpu}", "rebuild it: edgetune device setup qemu --force")
    return root


def command(core: Core) -> list[str]:
    """The argument list that starts the board's Python on ``core`` (the script and its
    arguments follow)."""
    problem = board_ready()
    if problem is not None:
        raise InputError(problem, "run: edgetune device setup qemu (it says what else it needs)")
    root = core_root(core)
    return [QEMU, "-cpu", core.qemu_cpu, "-L", str(root), str(root / PYTHON)]


def environment() -> dict[str, str]:
    """A clean environment for the emulated Python: its own packages only. PYTHONPATH is set
    here, for this child, never in edgetune's own environment."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(board_dir() / "site"),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run_agent(device: QemuDevice, agent_args: list[str], timeout_s: float, label: str) -> dict[str, Any]:
    """The bench agent under emulation; its JSON document, or the one-line error."""
    argv = [*command(device.core), str(AGENT), *agent_args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=environment(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InputError(
            f"{device} did not finish {label} within {timeout_s:g} s", "give fewer samples: emulation runs 20-60x slower than the board"
        ) from None
    if done.returncode < 0 or "Illegal instruction" in done.stderr:
        raise InputError(
            f"{device} crashed running {label} (signal {-done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1][:200]}",
            "rebuild the board (edgetune device setup qemu --force) and report it if it persists",
        )
    return parse_agent_output(done.stdout, done.stderr, done.returncode, label, str(device))
