"""``edgetune device``: devices that need preparing before use (the emulated qemu board)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.group("device")
def group() -> None:
    """Prepare devices: `edgetune device setup qemu` builds the emulated arm64 board."""


@group.command("setup")
@click.argument("kind", type=click.Choice(["qemu"]))
@click.option("--mirror", metavar="URL", help="Debian mirror for the arm64 userland (default: the one apt uses).")
@click.option("--force", is_flag=True, help="Rebuild even if a board is cached.")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Unpack the board from this tarball if it exists, else build it and save it there (for CI caches).",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def setup(kind: str, mirror: str | None, force: bool, archive: Path | None, quiet: bool, as_json: bool) -> None:
    """Build and cache the emulated board (qemu user-mode, arm64 Debian userland, the aarch64
    builds of LiteRT and ONNX Runtime) under $EDGETUNE_CACHE (default ~/.cache/edgetune).
    Needs root, qemu-user-static and debootstrap; says what is missing."""
    from edgetune.profile.qemu_setup import setup as build
    from edgetune.progress import StderrProgress

    emit(build(mirror, force, archive, StderrProgress(not quiet and not as_json)), as_json, _human)


def _human(doc: dict[str, Any]) -> str:
    action = f"built in {doc['seconds']} s" if doc.get("built") else "already built (pass --force to rebuild)"
    rows = [
        ("board", f"{doc['path']}: {action}"),
        ("userland", f"Debian {doc['suite']} arm64 from {doc['mirror']}"),
        ("cores", ", ".join(doc["cores"])),
        ("packages", ", ".join(f"{k} {v}" for k, v in doc["packages"].items())),
        ("qemu", doc["qemu"]),
        ("use", "--device qemu:raspberry-pi-4 or qemu:raspberry-pi-5 with eval, bench and gate"),
    ]
    return table(rows)
