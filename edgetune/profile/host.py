"""Latency and memory of an ONNX artifact on this host, with ONNX Runtime."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner

Progress = Callable[[int, int, str], None]


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class BenchResult:
    artifact: str
    runtime: str
    threads: int
    runs: int
    warmup: int
    batch: int
    load_ms: float
    first_inference_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_per_s: float
    rss_delta_mb: float
    peak_rss_mb: float
    artifact_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def load_runner(path: Path, threads: int) -> OnnxRunner | TfliteRunner:
    if path.suffix == ".tflite":
        return TfliteRunner(path.read_bytes(), threads=threads)
    return OnnxRunner(path, threads=threads)


def bench_artifact(path: Path, threads: int, runs: int = 100, warmup: int = 10, progress: Progress | None = None) -> BenchResult:
    """Time single-sample inference of an .onnx or .tflite file: ``warmup`` untimed runs, then ``runs`` timed ones."""
    rss_before = current_rss_mb()
    start = time.perf_counter()
    runner = load_runner(path, threads)
    load_ms = (time.perf_counter() - start) * 1e3
    sample = np.random.default_rng(0).standard_normal([1, *runner.sample_shape]).astype(np.float32)
    start = time.perf_counter()
    runner.run_one(sample)
    first_ms = (time.perf_counter() - start) * 1e3
    for index in range(warmup):
        runner.run_one(sample)
        if progress is not None:
            progress(index + 1, warmup + runs, "benchmark")
    times = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        runner.run_one(sample)
        times[index] = time.perf_counter() - start
        if progress is not None:
            progress(warmup + index + 1, warmup + runs, "benchmark")
    times_ms = times * 1e3
    return BenchResult(
        artifact=str(path),
        runtime=runner.runtime,
        threads=threads,
        runs=runs,
        warmup=warmup,
        batch=1,
        load_ms=load_ms,
        first_inference_ms=first_ms,
        p50_ms=float(np.percentile(times_ms, 50)),
        p90_ms=float(np.percentile(times_ms, 90)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=float(times_ms.mean()),
        std_ms=float(times_ms.std()),
        min_ms=float(times_ms.min()),
        throughput_per_s=float(1e3 / times_ms.mean()),
        rss_delta_mb=current_rss_mb() - rss_before,
        peak_rss_mb=peak_rss_mb(),
        artifact_bytes=path.stat().st_size,
    )
