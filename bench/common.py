"""Shared helpers for the benchmarks: interleaved latency rounds, tables, JSON output."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved_latency(
    models: dict[str, bytes | str], sample: np.ndarray, threads: int, rounds: int = 7, runs: int = 60, warmup: int = 15
) -> dict[str, dict[str, float]]:
    """Median single-sample latency per model, rounds interleaved so that machine noise hits all alike.

    Each round warms every session up, then lets the previous session's threads go idle
    (ORT's pool spins for a while after a run) before timing.
    """
    import onnxruntime as ort

    sessions = {}
    for name, model in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    medians: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            session = sessions[name]
            feed = {session.get_inputs()[0].name: sample}
            for _ in range(warmup):
                session.run(None, feed)
            time.sleep(0.2)
            session.run(None, feed)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)) * 1e3)
    return {
        name: {"median_ms": float(np.median(values)), "spread_ms": float(np.max(values) - np.min(values)), "rounds": len(values)}
        for name, values in medians.items()
    }


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


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
