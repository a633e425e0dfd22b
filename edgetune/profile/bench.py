"""One entry point for every bench: pick measured (host, SSH, adb) or estimated, and add
the static analyses (MCU memory plan for TFLite) to the document."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.profile.measure import Settings, bench_document, check_artifact, run_local
from edgetune.targets import Target, load_target


@dataclass(frozen=True)
class BenchRequest:
    artifact: Path
    target: str = "host"
    devices: tuple[str, ...] = ()  # ssh://user@host[:port] or adb:SERIAL; none: this host (or an estimate)
    threads: int | None = None
    runs: int = 100
    warmup: int = 10
    min_seconds: float = 0.0
    op_profile: bool = False
    timeout_s: float = 600.0
    memory_cap_mb: float = 4096.0
    ssh_config: Path | None = None
    samples: int = 16  # seeded random inputs checked on an emulated (qemu:) device


def _settings(request: BenchRequest, target: Target) -> Settings:
    threads = request.threads or target.resolved_threads()
    affinity = target.affinity if request.threads is None else ()
    return Settings(
        threads, request.runs, request.warmup, request.min_seconds, affinity, request.op_profile, request.timeout_s, request.memory_cap_mb
    )


def _static(path: Path, fmt: str, target: Target) -> dict[str, Any]:
    """What the file alone tells: the MCU-style activation arena and flash of a TFLite model."""
    if fmt != "tflite":
        return {}
    from edgetune.profile.mcu import memory_plan
    from edgetune.profile.ops import read_ops

    try:
        return {"memory_plan": memory_plan(read_ops(path), path.stat().st_size, target)}
    except InputError:
        raise
    except Exception as exc:  # a file the runtime accepted but whose structure we cannot follow
        raise InputError(f"cannot read the graph of {path} ({type(exc).__name__})", "check the artifact") from None


def _estimated(request: BenchRequest, target: Target, fmt: str) -> dict[str, Any]:
    from edgetune.profile.estimate import error_bar, estimate_latency
    from edgetune.profile.ops import read_ops

    threads = request.threads or target.resolved_threads()
    return {
        "schema": "edgetune.bench",
        "version": 2,
        "kind": "estimated",
        "artifact": str(request.artifact),
        "artifact_bytes": request.artifact.stat().st_size,
        "target": target.name,
        "device": None,
        "estimate": estimate_latency(read_ops(request.artifact), target, threads),
        "error_bar": error_bar(load_target("host")),
        "note": f"estimated from the {target.name} profile's figures: no {target.name} was attached (pass --device to measure one)",
    }


def _measured(request: BenchRequest, target: Target, device: str | None) -> dict[str, Any]:
    settings = _settings(request, target)
    if device is None:
        raw = run_local(request.artifact, settings)
        where = "this host"
    elif device.startswith("ssh://"):
        from edgetune.profile.remote import SshDevice, run_remote

        ssh = SshDevice.parse(device)
        raw = run_remote(request.artifact, ssh, settings, request.ssh_config)
        where = str(ssh)
    elif device.startswith("adb:"):
        from edgetune.profile.adb import run_adb

        return run_adb(request.artifact, device[4:], settings, target)
    elif device.startswith("qemu:"):
        return _emulated(request, target, device)
    else:
        raise InputError(f"device {device!r} is not like ssh://user@host[:port], adb:SERIAL or qemu:TARGET", "fix --device")
    return bench_document(raw, request.artifact, target.name, where)


def _emulated(request: BenchRequest, target: Target, device: str) -> dict[str, Any]:
    """Results only: the artifact's outputs on the emulated board against this host's, on
    seeded random inputs (``edgetune eval --device`` checks real data)."""

    from edgetune.profile.parity import ParityRequest, parity, public, random_samples
    from edgetune.profile.qemu import QemuDevice

    board = QemuDevice.parse(device)
    samples, source = random_samples(request.artifact, request.samples)
    document = public(parity(ParityRequest(request.artifact, board, samples, source, timeout_s=request.timeout_s)))
    return {**document, "artifact_bytes": request.artifact.stat().st_size, "target": target.name}


def _verify(request: BenchRequest, target: Target) -> None:
    """Load the artifact once in a capped child process on this host, so that the runtime's own
    checks (TFLite's flatbuffer verifier) pass before edgetune parses the file itself."""
    run_local(request.artifact, replace(_settings(request, target), load_only=True, timeout_s=min(request.timeout_s, 120)))


def bench(request: BenchRequest) -> list[dict[str, Any]]:
    """One document per device (measured), or one for this host (measured) or the target (estimated)."""
    fmt = check_artifact(request.artifact)
    emulated = {d.removeprefix("qemu:") for d in request.devices if d.startswith("qemu:")}
    if request.target == "host" and len(emulated) == 1 and len(request.devices) == 1:
        request = replace(request, target=emulated.pop())  # the board's profile for the memory plan
    target = load_target(request.target)
    local = not request.devices and target.name == "host"
    if not local:
        _verify(request, target)
    if local:
        documents = [_measured(request, target, None)]
    elif not request.devices:
        documents = [_estimated(request, target, fmt)]
    elif len(request.devices) == 1:
        documents = [_measured(request, target, request.devices[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(request.devices))) as pool:
            documents = list(pool.map(lambda device: _measured(request, target, device), request.devices))
    static = _static(request.artifact, fmt, target)
    return [{**document, **static} for document in documents]
