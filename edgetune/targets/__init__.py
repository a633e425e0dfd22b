"""Hardware target profiles: ``targets/<name>.toml`` files, read by a small loader.

Adding a board is adding a file. Profiles in the user's folder (``$EDGETUNE_HOME/targets``,
default ``~/.config/edgetune/targets``) take precedence over the bundled ones of the same
name: ``edgetune targets calibrate host`` writes the measured host profile there.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.resources import bundled_dir, read_toml, resolve_named

CLASSES = ("cpu", "mcu")
ACTIVATIONS = ("int8", "uint8", "auto")


# Without a measured figure, depthwise convolutions are taken to reach this share of the dense
# peak: one multiply per loaded weight leaves vector units waiting on memory and shuffles.
DEPTHWISE_SHARE = 0.25
DEFAULT_OP_OVERHEAD_US = {"cpu": 5.0, "mcu": 20.0}


@dataclass(frozen=True)
class Peak:
    int8_gmacs: float
    fp32_gmacs: float
    bandwidth_gbs: float
    source: str
    depthwise_int8_gmacs: float = 0.0  # 0: DEPTHWISE_SHARE of the dense peak
    depthwise_fp32_gmacs: float = 0.0
    op_overhead_us: float = 0.0  # 0: the class default
    run_overhead_us: float = 0.0  # once per inference (the runtime's call, input and output binding)
    threads: int = 0  # the thread count the figures hold for (0: all cores)

    def rate(self, kind: str, int8: bool) -> float:
        """MACs per second for a ``dense`` or ``depthwise`` op."""
        dense = self.int8_gmacs if int8 else self.fp32_gmacs
        if kind == "depthwise":
            measured = self.depthwise_int8_gmacs if int8 else self.depthwise_fp32_gmacs
            return (measured or dense * DEPTHWISE_SHARE) * 1e9
        return dense * 1e9


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    device_class: str
    cores: int
    threads: int
    affinity: tuple[int, ...]
    clock_ghz: float
    isa: tuple[str, ...]
    ram_mb: float
    flash_mb: float
    runtime: str
    onnx_activations: str
    channel_multiple: int
    peak: Peak
    budgets: dict[str, float] = field(default_factory=dict)
    path: str = ""
    estimator_check: dict[str, Any] = field(default_factory=dict)  # estimate/measured ratios on this host
    core: str = ""  # the CPU core, as qemu names it (cortex-a72): what an emulated device runs on

    def __post_init__(self) -> None:
        if self.device_class not in CLASSES:
            raise InputError(f"target {self.name}: class {self.device_class!r} is unknown", f"use one of {', '.join(CLASSES)}")
        if self.onnx_activations not in ACTIVATIONS:
            raise InputError(f"target {self.name}: onnx_activations {self.onnx_activations!r}", f"use one of {', '.join(ACTIVATIONS)}")
        if self.threads < 0 or self.channel_multiple < 1:
            raise InputError(f"target {self.name}: threads or channel_multiple out of range", "fix the profile")

    @property
    def unsigned_activations(self) -> bool:
        """uint8 activations in the ONNX artifact (ORT's fast x86 path), else int8."""
        if self.onnx_activations == "auto":
            return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
        return self.onnx_activations == "uint8"

    def resolved_threads(self) -> int:
        return self.threads or usable_cores()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class"] = data.pop("device_class")
        data["affinity"] = list(self.affinity)
        data["isa"] = list(self.isa)
        return data


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fit_torch_threads() -> None:
    """Torch's intra-op threads to the cores this process may use. Torch sizes its pool from the
    machine's cores when it starts; a process pinned to fewer (taskset, a container's cpuset)
    would run more threads than cores, and they wait for each other a time slice at a time."""
    import torch

    cores = usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def user_dir() -> Path:
    home = os.environ.get("EDGETUNE_HOME")
    return (Path(home) if home else Path.home() / ".config" / "edgetune") / "targets"


def target_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(bundled_dir("targets").glob("*.toml"))}
    if user_dir().is_dir():
        files.update({p.stem: p for p in sorted(user_dir().glob("*.toml"))})
    return files


def load_target(name_or_path: str) -> Target:
    path = resolve_named(name_or_path, target_files(), "target")
    raw = read_toml(path, "target")
    try:
        peak = raw.get("peak", {})
        return Target(
            name=str(raw["name"]),
            description=str(raw.get("description", "")),
            device_class=str(raw["class"]),
            cores=int(raw["cores"]),
            threads=int(raw["threads"]),
            affinity=tuple(int(c) for c in raw.get("affinity", [])),
            clock_ghz=float(raw.get("clock_ghz", 0.0)),
            isa=tuple(str(i) for i in raw.get("isa", [])),
            ram_mb=float(raw.get("ram_mb", 0)),
            flash_mb=float(raw.get("flash_mb", 0)),
            runtime=str(raw["runtime"]),
            onnx_activations=str(raw.get("onnx_activations", "int8")),
            channel_multiple=int(raw.get("channel_multiple", 1)),
            peak=Peak(
                float(peak.get("int8_gmacs", 0.0)),
                float(peak.get("fp32_gmacs", 0.0)),
                float(peak.get("bandwidth_gbs", 0.0)),
                str(peak.get("source", "")),
                float(peak.get("depthwise_int8_gmacs", 0.0)),
                float(peak.get("depthwise_fp32_gmacs", 0.0)),
                float(peak.get("op_overhead_us", 0.0)) or DEFAULT_OP_OVERHEAD_US.get(str(raw["class"]), 5.0),
                float(peak.get("run_overhead_us", 0.0)),
                int(peak.get("threads", 0)),
            ),
            budgets={str(k): float(v) for k, v in raw.get("budgets", {}).items()},
            path=str(path),
            estimator_check=dict(raw.get("estimator_check", {})),
            core=str(raw.get("core", "")),
        )
    except KeyError as exc:
        raise InputError(f"target file {path} lacks the field {exc.args[0]}", "add it (see targets/host.toml)") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"target file {path} has a bad value ({exc})", "fix the file") from None


def all_targets() -> list[Target]:
    return [load_target(str(path)) for path in target_files().values()]
