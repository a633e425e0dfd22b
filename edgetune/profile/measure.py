"""Measured benchmarks: the bench agent in a child process on this host, with a time and a
memory cap, and the raw result turned into edgetune's bench document.

The same agent runs on boards over SSH (``remote.py``), so every measured figure in a bench
document comes from one piece of code, wherever it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import InputError
from edgetune.profile.stats import latency_summary

AGENT = Path(__file__).with_name("agent.py")
EXIT_NO_RUNTIME, EXIT_BAD_MODEL = 3, 4


@dataclass(frozen=True)
class Settings:
    threads: int
    runs: int = 100
    warmup: int = 10
    min_seconds: float = 0.0
    affinity: tuple[int, ...] = ()
    op_profile: bool = False
    timeout_s: float = 600.0
    memory_cap_mb: float = 4096.0
    load_only: bool = False

    def agent_args(self, model: str) -> list[str]:
        if self.load_only:
            return [model, "--load-only"]
        args = [model, "--threads", str(self.threads), "--runs", str(self.runs), "--warmup", str(self.warmup)]
        args += ["--min-seconds", str(self.min_seconds)]
        if self.affinity:
            args += ["--affinity", ",".join(map(str, self.affinity))]
        if self.op_profile:
            args.append("--op-profile")
        return args


def check_artifact(path: Path) -> str:
    """The artifact's format, after the checks that need no runtime: ONNX through
    ``onnx.checker``; a TFLite file is verified by the interpreter when the agent loads it."""
    if not path.is_file():
        raise InputError(f"artifact {path} does not exist", "check the path")
    if path.suffix == ".tflite":
        head = path.read_bytes()[:8]
        if len(head) < 8 or head[4:8] != b"TFL3":
            raise InputError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file")
        return "tflite"
    if path.suffix == ".onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            raise InputError(
                f"cannot load {path}: onnx.checker rejects it ({str(exc).splitlines()[0][:200]})", "pass a valid ONNX model"
            ) from None
        return "onnx"
    raise InputError(
        f"bench runs .onnx and .tflite artifacts, not {path.suffix or 'files without suffix'}", "pass model.onnx or model.tflite"
    )


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def run_local(path: Path, settings: Settings, python: str = sys.executable) -> dict[str, Any]:
    """The agent in a child process on this host, killed past ``timeout_s`` or ``memory_cap_mb``."""
    process = subprocess.Popen(
        [python, str(AGENT), *settings.agent_args(str(path))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    over: list[float] = []

    def watch() -> None:
        while process.poll() is None:
            rss = _rss_mb(process.pid)
            if rss > settings.memory_cap_mb:
                over.append(rss)
                process.kill()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = process.communicate(timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise InputError(f"benchmarking {path} took longer than {settings.timeout_s:g} s", "use fewer --runs or check the model") from None
    finally:
        watcher.join()
    if over:
        raise InputError(
            f"benchmarking {path} used more than {settings.memory_cap_mb:g} MiB ({over[0]:.0f} MiB) and was stopped", "check the model"
        )
    return parse_agent_output(out, err, process.returncode, str(path), "this host")


def parse_agent_output(out: str, err: str, code: int, model: str, where: str) -> dict[str, Any]:
    """The agent's JSON, or the one-line error its exit code and message stand for."""
    lines = [line for line in out.splitlines() if line.startswith("{")]
    raw = json.loads(lines[-1]) if lines else None
    if raw is not None and "error" in raw:
        message = raw["error"]["message"]
        if code == EXIT_NO_RUNTIME:
            raise InputError(f"{message} on {where}", "install onnxruntime, ai-edge-litert or tflite-runtime there")
        raise InputError(f"cannot load {model}: {message}", "check that the artifact is valid")
    if code != 0 or raw is None:
        last = next((line for line in reversed(err.strip().splitlines()) if line.strip()), f"exit code {code}")
        raise InputError(f"the bench agent failed on {where} ({code}): {last[:300]}", "rerun with --debug, or check the runtime there")
    return raw


def bench_document(raw: dict[str, Any], path: Path, target: str, device: str) -> dict[str, Any]:
    """edgetune's bench document (schema edgetune.bench, version 2) from one agent run."""
    memory = raw["memory"]
    peak_delta = None
    if memory.get("peak_end_kib") is not None and memory.get("peak_after_import_kib") is not None:
        peak_delta = (memory["peak_end_kib"] - memory["peak_after_import_kib"]) * 1024
    latency = latency_summary(raw["times_ms"], raw["warmup"])
    document: dict[str, Any] = {
        "schema": "edgetune.bench",
        "version": 2,
        "kind": "measured",
        "artifact": str(path),
        "artifact_bytes": path.stat().st_size,
        "target": target,
        "device": device,
        "runtime": raw["runtime"],
        "threads": raw["threads"],
        "affinity": raw.get("affinity"),
        "machine": raw.get("machine"),
        "load_ms": raw["load_ms"],
        "first_inference_ms": raw["first_inference_ms"],
        **latency,
        "memory": {
            "peak_rss_delta_bytes": peak_delta,
            "definition": "peak RSS after loading and running the model minus peak RSS after importing the runtime",
            "arena_bytes": None,
            "arena_note": "neither ONNX Runtime's nor TFLite's Python API exposes its arena size",
        },
        "ops": raw.get("ops"),
        "delegation": raw.get("delegation"),
        "warnings": warnings_for(raw),
        "times_ms": [round(t, 6) for t in raw["times_ms"]],
    }
    return document


def warnings_for(raw: dict[str, Any]) -> list[str]:
    notes = []
    delegation = raw.get("delegation")
    if delegation and delegation.get("int8") and delegation["ops"] and delegation["delegated"] == 0:
        notes.append(
            f"{raw['runtime']} ran this int8 model on its reference kernels (nothing was delegated to XNNPACK):"
            " expect it to be many times slower than on ai-edge-litert, which delegates int8 to XNNPACK"
        )
    elif delegation and delegation.get("not_delegated"):
        notes.append(f"not delegated to XNNPACK: {', '.join(sorted(set(delegation['not_delegated'])))}")
    floating = (raw.get("ops") or {}).get("float_kernels")
    if floating:
        kernels = ", ".join(f"{count} {op}" for op, count in sorted(floating.items()))
        notes.append(
            f"{kernels} ran in float in this int8 model (layers kept in float, or quantize and dequantize pairs that"
            f" {raw['runtime']} did not fuse into int8 kernels on this host): those layers get no int8 speed-up here"
        )
    return notes
