"""Profile: latency and memory of an artifact, measured on this host."""

from edgetune.profile.host import BenchResult, bench_artifact

__all__ = ["BenchResult", "bench_artifact"]
