"""Shared helpers for the benchmarks: interleaved latency rounds, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved(
    runs_once: dict[str, Callable[[], Any]], rounds: int = 7, runs: int = 60, warmup: int = 15, idle_s: float = 0.2
) -> dict[str, dict[str, float]]:
    """Median latency per contender, rounds interleaved so that machine noise hits all alike.

    Each round warms every contender up, then lets the previous one's threads go idle
    (ORT's pool spins for a while after a run) before timing it.
    """
    medians: dict[str, list[float]] = {name: [] for name in runs_once}
    names = list(runs_once)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = runs_once[name]
            for _ in range(warmup):
                run()
            time.sleep(idle_s)
            run()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)) * 1e3)
    return {
        name: {"median_ms": float(np.median(values)), "spread_ms": float(np.max(values) - np.min(values)), "rounds": len(values)}
        for name, values in medians.items()
    }


def interleaved_latency(models: dict[str, bytes | str], sample: np.ndarray, threads: int, rounds: int = 7) -> dict[str, dict[str, float]]:
    """ONNX Runtime sessions of ``models`` timed with :func:`interleaved`."""
    import onnxruntime as ort

    runs_once = {}
    for name, model in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: sample}
        runs_once[name] = partial(session.run, None, feed)
    return interleaved(runs_once, rounds=rounds)


def table(rows: list[list[Any]], header: list[str]) -> str:
    text = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(name: str, document: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        **document,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def run_peer(argv: list[str], cwd: Path, peers: Path) -> float:
    """A peer tool's command in its own environment (``peers``: the venv), timed from start to
    exit; its output tail is the error when it fails."""
    env = {**os.environ, "PATH": f"{peers / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
