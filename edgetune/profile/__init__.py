"""Profile: latency and memory per hardware target, measured on this host or on a board
(SSH, adb), or estimated from the target profile and labelled so; MCU memory plans."""

from edgetune.profile.bench import BenchRequest, bench

__all__ = ["BenchRequest", "bench"]
