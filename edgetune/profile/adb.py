"""Benchmarks on an Android device over adb, with TFLite's own ``benchmark_model``.

The artifact is pushed to ``/data/local/tmp`` and timed by ``benchmark_model``, which must
already be there (it is built from TensorFlow's sources; see the README of
tensorflow/lite/tools/benchmark). Two runs: one timed without op profiling (profiling slows
the runs it watches), one with ``--enable_op_profiling=true`` for the time per op type.

What is read from its output, as that README and the tool print it:

- each benchmark phase ends with a bare statistics line, the last one being the timed runs:
  ``count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929`` (microseconds);
- ``Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9`` (newer
  builds print ``Inference timings in us: Init: .., First inference: .., Warmup (avg): ..,
  Inference (avg): ..``; both are read);
- with ``--report_peak_memory_footprint=true``: ``Peak memory footprint (MB): init=.. overall=..``;
- with op profiling, after "Operator-wise Profiling Info for Regular Benchmark Runs", the
  "Summary by node type" table (tab separated: node type, count, avg ms, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.profile.measure import Settings
from edgetune.targets import Target

REMOTE_DIR = "/data/local/tmp"
BENCHMARK = f"{REMOTE_DIR}/benchmark_model"
_SERIAL = re.compile(r"^[A-Za-z0-9_.:-]+$")
_RUN_STATS = re.compile(r"^\s*(count=\d+.*)$", re.MULTILINE)  # a bare statistics line, not the profiler's "Timings ..."
_AVERAGES = re.compile(r"(?:Average inference|Inference) timings in us:\s*(.*)")  # README's wording, then newer tools'
_PEAK = re.compile(r"Peak memory footprint \(MB\):\s*init=([\d.]+)\s+overall=([\d.]+)")


def _pairs(text: str, separator: str) -> dict[str, float]:
    """``a=1 b=2`` or ``A: 1, B: 2`` to a dict of numbers."""
    found = {}
    for key, value in re.findall(rf"([A-Za-z][A-Za-z ()]*?)\s*{separator}\s*(-?[\d.]+(?:e[-+]?\d+)?)", text):
        found[key.strip().lower().removesuffix(" (avg)")] = float(value)
    return found


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """What ``benchmark_model`` printed, as numbers (the last bare statistics line is the timed runs)."""
    timings = [_pairs(m.group(1), "=") for m in _RUN_STATS.finditer(text)]
    averages = [_pairs(m.group(1), ":") for m in _AVERAGES.finditer(text)]
    if not timings or not averages:
        raise InputError("benchmark_model printed no timings", "run it by hand on the device to see why")
    by_type = {}
    in_summary = False
    regular = text.split("Operator-wise Profiling Info for Regular Benchmark Runs", 1)
    for line in (regular[1] if len(regular) > 1 else "").splitlines():
        if "Summary by node type" in line:
            in_summary = True
            continue
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if in_summary and len(cells) >= 3 and not cells[0].startswith("["):
            try:
                by_type[cells[0]] = float(cells[2])
            except ValueError:
                in_summary = False
        elif in_summary and not cells:
            in_summary = False
    peak = _PEAK.search(text)
    return {
        "timings_us": timings[-1],
        "averages_us": averages[-1],
        "ms_by_op_type": by_type,
        "peak_memory_mb": {"init": float(peak.group(1)), "overall": float(peak.group(2))} if peak else None,
    }


def _adb(serial: str | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("adb")
    if tool is None:
        raise InputError("adb is not installed on this machine", "install Android's platform tools (Debian: apt install adb)")
    argv = [tool, *(["-s", serial] if serial else []), *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InputError(f"adb {' '.join(args[:2])} did not finish within {timeout:g} s", "check the device") from None


def attached() -> list[str]:
    done = _adb(None, "devices")
    return [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip().endswith("device")]


def run_adb(path: Path, serial: str, settings: Settings, target: Target) -> dict[str, Any]:
    if not _SERIAL.match(serial):
        raise InputError(f"adb serial {serial!r} has unexpected characters", "copy it from 'adb devices'")
    if path.suffix != ".tflite":
        raise InputError("adb benchmarks run .tflite artifacts (with TFLite's benchmark_model)", "pass model.tflite")
    devices = attached()
    if serial not in devices:
        listing = ", ".join(devices) if devices else "none"
        raise InputError(f"no Android device {serial!r} is attached (attached: {listing})", "connect it and check 'adb devices'")
    if _adb(serial, "shell", "ls", BENCHMARK).returncode != 0:
        raise InputError(f"{BENCHMARK} is not on {serial}", "build TFLite's benchmark_model for the device and adb push it there")
    remote = f"{REMOTE_DIR}/edgetune_model.tflite"
    pushed = _adb(serial, "push", str(path.resolve()), remote, timeout=settings.timeout_s)  # absolute: never read as an option
    if pushed.returncode != 0:
        raise InputError(f"adb push to {serial} failed: {pushed.stderr.strip()[:200]}", "check the device's storage")
    flags = [f"--graph={remote}", f"--num_threads={settings.threads}", f"--warmup_runs={max(1, settings.warmup)}"]
    timed = _adb(
        serial,
        "shell",
        BENCHMARK,
        *flags,
        f"--num_runs={settings.runs}",
        f"--min_secs={settings.min_seconds}",
        "--report_peak_memory_footprint=true",
        timeout=settings.timeout_s,
    )
    parsed = parse_benchmark_output(timed.stdout + timed.stderr)
    if settings.op_profile:
        profiled = _adb(serial, "shell", BENCHMARK, *flags, "--num_runs=20", "--enable_op_profiling=true", timeout=settings.timeout_s)
        parsed["ms_by_op_type"] = parse_benchmark_output(profiled.stdout + profiled.stderr)["ms_by_op_type"]
    _adb(serial, "shell", "rm", "-f", remote)
    return adb_document(parsed, path, target, serial, settings)


def adb_document(parsed: dict[str, Any], path: Path, target: Target, serial: str, settings: Settings) -> dict[str, Any]:
    timings, averages = parsed["timings_us"], parsed["averages_us"]
    peak = parsed["peak_memory_mb"]
    return {
        "schema": "edgetune.bench",
        "version": 2,
        "kind": "measured",
        "artifact": str(path),
        "artifact_bytes": path.stat().st_size,
        "target": target.name,
        "device": f"adb:{serial}",
        "runtime": "TFLite benchmark_model",
        "threads": settings.threads,
        "runs": int(timings.get("count", 0)),
        "warmup": settings.warmup,
        "p50_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "mean_ms": timings.get("avg", 0.0) / 1e3,
        "std_ms": timings.get("std", 0.0) / 1e3,
        "min_ms": timings.get("min", 0.0) / 1e3,
        "max_ms": timings.get("max", 0.0) / 1e3,
        "median_ci95_ms": None,
        "load_ms": averages.get("init", 0.0) / 1e3,
        "first_inference_ms": timings.get("first", 0.0) / 1e3,
        "throughput_per_s": 1e6 / timings["avg"] if timings.get("avg") else None,
        "memory": {
            "peak_rss_delta_bytes": int(peak["overall"] * 2**20) if peak else None,
            "definition": "benchmark_model's peak memory footprint (overall)",
            "arena_bytes": None,
        },
        "ops": {"source": "benchmark_model op profiling", "ms_by_op_type": parsed["ms_by_op_type"]},
        "delegation": None,
        "warnings": ["benchmark_model reports mean, std, min and max, not percentiles"],
    }
