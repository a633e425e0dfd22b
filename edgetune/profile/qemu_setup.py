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
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # debootstrap checks bookworm's signatures with it
PACKAGES = ("numpy", "ai-edge-litert", "onnxruntime")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
STEPS = 5


def apt_mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses for bookworm (deb822 or one-line sources),
    else deb.debian.org: an Ubuntu machine's mirrors have no bookworm."""
    if sources is None:
        sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = [stanza for stanza in re.split(r"\n\s*\n", text)] if path.suffix == ".sources" else text.splitlines()
        for entry in entries:
            match = re.search(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)(?:\s+(\S+))?", entry, re.MULTILINE)
            suites = re.search(r"^Suites:(.*)$", entry, re.MULTILINE)
            named = (suites.group(1) if suites else (match.group(2) if match else "")) or ""
            uri = match.group(1).rstrip("/") if match else ""
            if uri.startswith(("http://", "https://")) and SUITE in named.split() and "security" not in uri:
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
    if not Path(KEYRING).is_file():
        needs.append("Debian's archive keys (apt-get install debian-archive-keyring)")
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
    argv = ["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3", f"--keyring={KEYRING}"]
    argv += [SUITE, str(rootfs), mirror]
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
        what = f"the smoke run on {core.qemu_cpu}"
        out = _run([QEMU, "-cpu", core.qemu_cpu, "-L", str(root), str(root / PYTHON), "-c", script], what, 300, env)
        try:
            reported = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise InputError(
                f"{what} printed no report ({out.strip()[-200:]!r})", "rebuild the board: edgetune device setup qemu --force"
            ) from None
    return reported


def _owner() -> tuple[int, int] | None:
    """The user behind ``sudo``, whose cache the board goes to (see ``edgetune.artifacts.cache_dir``)."""
    name = os.environ.get("SUDO_USER")
    if not name or os.environ.get("EDGETUNE_CACHE") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _hand_over(folder: Path, owner: tuple[int, int] | None) -> None:
    """Give the board, and the cache folders made for it, to the user behind sudo."""
    if owner is None:
        return
    for path in [folder, *folder.rglob("*")]:
        os.lchown(path, *owner)
    home = Path(os.path.expanduser(f"~{os.environ['SUDO_USER']}"))
    for parent in folder.parents:  # ~/.cache/edgetune/qemu, as far as root made them
        if parent == home or home not in parent.parents:
            break
        if parent.stat().st_uid == 0:
            os.lchown(parent, *owner)


def setup(mirror: str | None = None, force: bool = False, archive: Path | None = None, progress: Progress = silent) -> dict[str, Any]:
    """Build (or, with ``force``, rebuild) the board; with ``archive``, unpack it from that
    tarball when it exists (and ``force`` is not given), else build and save one there (CI
    caches keep it between runs). The new board replaces the old one only once complete."""
    target = board_dir()
    if (target / "board.json").is_file() and not force:
        return {**json.loads((target / "board.json").read_text()), "built": False, "path": str(target)}
    if shutil.which(QEMU) is None:
        raise InputError(f"{QEMU} is not installed", "apt-get install qemu-user-static (Debian/Ubuntu)")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{BOARD_NAME}.*"):  # left by an interrupted setup
        shutil.rmtree(stale, ignore_errors=True)
    partial = target.parent / f".{BOARD_NAME}.partial-{os.getpid()}"
    partial.mkdir()
    started = time.perf_counter()
    try:
        if archive is not None and archive.is_file() and not force:
            progress(0, 2, "unpacking the board")
            info = _restore(archive, partial)
            progress(1, 2, "smoke run")
            _cores(partial)
            _smoke(partial)
            progress(2, 2, "smoke run")
        else:
            info = _build(partial, mirror or apt_mirror(), progress)
            if archive is not None:
                _save_archive(partial, archive)
        _hand_over(partial, _owner())
        old = target.parent / f".{BOARD_NAME}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
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


def safe_members(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The archive's files, folders and links, checked so that extracting them cannot touch
    anything outside the board: no absolute or ``..`` names, hard links only to members of
    the archive, and nothing beneath a symbolic link (a link could lead the write out). The
    userland's own absolute links are kept: they point into the emulated root, and nothing
    is ever written through them. Device files are skipped."""

    def bad(name: str) -> bool:
        return name.startswith("/") or ".." in Path(name).parts

    links = {m.name.rstrip("/") for m in members if m.issym()}
    names = {m.name.rstrip("/") for m in members}
    kept = []
    for member in members:
        parents = {str(parent) for parent in Path(member.name).parents}
        if bad(member.name) or parents & links or (member.islnk() and (bad(member.linkname) or member.linkname not in names)):
            raise InputError(f"the board archive has an unsafe entry: {member.name}", "delete the archive and run setup again")
        if member.isfile() or member.isdir() or member.issym() or member.islnk():
            kept.append(member)
    return kept


def _restore(archive: Path, partial: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive) as tar:
            members = safe_members(tar.getmembers())
            # The checks above replace tarfile's own filters, which would refuse the userland's
            # absolute links (and which Python 3.10 before 3.10.12 lacks).
            trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(partial, members=members, **trusted)  # type: ignore[arg-type]
        info = json.loads((partial / "board.json").read_text())
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot unpack the board archive {archive} ({type(exc).__name__})", "delete it and run setup again") from None
    if not isinstance(info, dict):
        raise InputError(f"the board archive {archive} has no board.json", "delete it and run setup again")
    return info


def _save_archive(partial: Path, archive: Path) -> None:
    """The board without its per-core folders (made again on restore, for that machine's cores)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    temporary = archive.with_name(archive.name + ".partial")
    with tarfile.open(temporary, "w:gz", compresslevel=3) as tar:
        for entry in sorted(partial.iterdir()):
            if entry.name != "cores":
                tar.add(entry, arcname=entry.name, filter=lambda m: m if (m.isfile() or m.isdir() or m.issym() or m.islnk()) else None)
    temporary.replace(archive)
