"""``edgetune device setup qemu``: build the emulated arm64 board in the cache, as a user can on
any Debian or Ubuntu machine with root.

1. ``debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm`` fetches
   Debian's minimal arm64 userland from the mirror apt uses. Its second stage would run under
   emulation (minutes); unpacking the downloaded packages with the host's ``dpkg -x`` gives the
   files Python needs in seconds.
2. pip fetches the aarch64 wheels of numpy, ai-edge-litert and onnxruntime, the versions this
   host runs, so that the two sides differ only in their kernels. The newer manylinux tags are
   listed, or pip stops at old numpy releases.
3. One folder per core (see ``qemu.py``) holds links to the userland and the core's cpuinfo.
4. A smoke run imports both runtimes on every core.

Everything is built in a temporary folder next to the board and renamed into place at the
end, so an interrupted setup leaves no half-made board.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.profile.qemu import BOARD_NAME, CORES, PYTHON, QEMU, board_dir, environment
from edgetune.progress import Progress, silent

SUITE = "bookworm"  # Python 3.11, which the cp311 wheels below are for
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("numpy", "ai-edge-litert", "onnxruntime")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
STEPS = 5


def apt_mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    if sources is None:
        sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and "security" not in uri:
                return uri
    return DEFAULT_MIRROR


def missing_tools() -> list[str]:
    """What this machine lacks to build the board, each with how to get it."""
    needs = []
    if shutil.which(QEMU) is None:
        needs.append(f"{QEMU} (apt-get install qemu-user-static)")
    if shutil.which("debootstrap") is None:
        needs.append("debootstrap (apt-get install debootstrap)")
    if shutil.which("dpkg") is None:
        needs.append("dpkg (a Debian or Ubuntu machine)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        needs.append("root (debootstrap must run as root: use sudo)")
    return needs


def _run(argv: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InputError(f"{what} took longer than {timeout:g} s", "check the network and the mirror, then run setup again") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line.strip()]
        raise InputError(f"{what} failed: {(lines or ['no message'])[-1][:300]}", "check the network and the mirror, then run setup again")
    return done.stdout


def _host_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _userland(partial: Path, mirror: str) -> None:
    rootfs = partial / "rootfs"
    argv = ["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3", SUITE, str(rootfs), mirror]
    _run(argv, f"debootstrap from {mirror}", timeout=1800)
    archives = rootfs / "var" / "cache" / "apt" / "archives"
    for deb in sorted(archives.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(rootfs)], f"unpacking {deb.name}", timeout=300)
        deb.unlink()
    if not (rootfs / PYTHON).is_file():
        raise InputError(f"the arm64 userland has no {PYTHON}", "run setup again with --force")


def _wheels(partial: Path, versions: dict[str, str]) -> None:
    requirements = [f"{p}=={versions[p]}" if p in versions else p for p in PACKAGES]
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"]
    argv += ["--python-version", "3.11", "--implementation", "cp", "--target", str(partial / "site")]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    _run([*argv, *requirements], "pip (aarch64 wheels of " + ", ".join(requirements) + ")", timeout=1800)


def _cores(partial: Path) -> None:
    processors = os.cpu_count() or 1  # the emulated program sees this host's /sys, so the counts agree
    rootfs = partial / "rootfs"
    for core in CORES.values():
        root = partial / "cores" / core.qemu_cpu
        (root / "proc").mkdir(parents=True)
        for entry in sorted(rootfs.iterdir()):
            if entry.name != "proc":
                (root / entry.name).symlink_to(Path("..", "..", "rootfs", entry.name))
        (root / "proc" / "cpuinfo").write_text(core.cpuinfo(processors))


def _smoke(partial: Path) -> dict[str, str]:
    """Import both runtimes on every core; returns what the board reports."""
    env = {**environment(), "PYTHONPATH": str(partial / "site")}
    script = (
        "import json, numpy, onnxruntime, ai_edge_litert.interpreter as i, platform;"
        "print(json.dumps({'machine': platform.machine(), 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))"
    )
    reported: dict[str, str] = {}
    for core in CORES.values():
        root = partial / "cores" / core.qemu_cpu
        out = _run(
            [QEMU, "-cpu", core.qemu_cpu, "-L", str(root), str(root / PYTHON), "-c", script], f"the smoke run on {core.qemu_cpu}", 300, env
        )
        reported = json.loads(out.strip().splitlines()[-1])
    return reported


def setup(mirror: str | None = None, force: bool = False, archive: Path | None = None, progress: Progress = silent) -> dict[str, Any]:
    """Build (or, with ``force``, rebuild) the board; with ``archive``, unpack it from that
    tarball when it exists, else build and save one there (CI caches keep it between runs)."""
    target = board_dir()
    if (target / "board.json").is_file() and not force:
        return {**json.loads((target / "board.json").read_text()), "built": False, "path": str(target)}
    if shutil.which(QEMU) is None:
        raise InputError(f"{QEMU} is not installed", "apt-get install qemu-user-static (Debian/Ubuntu)")
    partial = target.parent / f".{BOARD_NAME}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    try:
        if archive is not None and archive.is_file():
            progress(0, 2, "unpacking the board")
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter=_member_filter)
            info = json.loads((partial / "board.json").read_text())
            progress(1, 2, "smoke run")
            _smoke(partial)
            progress(2, 2, "smoke run")
        else:
            info = _build(partial, mirror or apt_mirror(), progress)
            if archive is not None:
                _save_archive(partial, archive)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {**info, "built": True, "path": str(target), "seconds": round(time.perf_counter() - started, 1)}


def _build(partial: Path, mirror: str, progress: Progress) -> dict[str, Any]:
    needs = missing_tools()
    if needs:
        raise InputError("building the emulated board needs " + "; ".join(needs), "install them, then run setup again")
    versions = _host_versions()
    progress(0, STEPS, "arm64 userland (debootstrap)")
    _userland(partial, mirror)
    progress(1, STEPS, "aarch64 wheels (pip)")
    _wheels(partial, versions)
    progress(2, STEPS, "cores")
    _cores(partial)
    progress(3, STEPS, "smoke run")
    reported = _smoke(partial)
    progress(4, STEPS, "smoke run")
    info = {
        "schema": "edgetune.qemu-board",
        "version": 1,
        "suite": SUITE,
        "mirror": mirror,
        "cores": sorted(CORES),
        "packages": {p: versions.get(p, "latest") for p in PACKAGES},
        "reported": reported,
        "qemu": _run([QEMU, "--version"], "qemu", 30).splitlines()[0],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (partial / "board.json").write_text(json.dumps(info, indent=2) + "\n")
    progress(STEPS, STEPS, "smoke run")
    return info


def _member_filter(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo | None:
    """Files, folders and links of the board only, never a path that leaves the folder. The
    userland's absolute links are kept: they point into the emulated root, not at this host's."""
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise InputError(f"the board archive has a path outside the board: {member.name}", "delete the archive and run setup again")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return None
    return member.replace(mode=member.mode & 0o755, uid=0, gid=0, uname="", gname="", deep=False)


def _save_archive(partial: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    temporary = archive.with_name(archive.name + ".partial")
    with tarfile.open(temporary, "w:gz", compresslevel=3) as tar:
        for entry in sorted(partial.iterdir()):
            tar.add(entry, arcname=entry.name, filter=lambda m: m if (m.isfile() or m.isdir() or m.issym() or m.islnk()) else None)
    temporary.replace(archive)
