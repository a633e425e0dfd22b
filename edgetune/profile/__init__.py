"""Profile: latency and memory of an artifact, measured on this host."""

from edgetune.profile.host import BenchResult, bench_onnx

__all__ = ["BenchResult", "bench_onnx"]
