"""Latency estimates for targets that are not attached: a per-op roofline from the target
profile's figures only.

Each op takes max(MACs / peak MAC rate, bytes moved / memory bandwidth) plus a fixed per-op
overhead, and each inference a fixed call overhead; the peak rate is the int8 or fp32 one, dense or depthwise, scaled to the threads
used. Nothing here is fitted to measured latencies. How far such estimates land from real
measurements is checked on this host (``edgetune targets calibrate host``), and that error
bar is printed with every estimate.
"""

from __future__ import annotations

from typing import Any

from edgetune.errors import InputError
from edgetune.profile.ops import OpList
from edgetune.targets import Target, usable_cores


def _thread_share(target: Target, threads: int) -> float:
    cores = target.peak.threads or target.cores or usable_cores()
    return min(threads, cores) / cores


def estimate_latency(ops: OpList, target: Target, threads: int) -> dict[str, Any]:
    peak = target.peak
    if peak.int8_gmacs <= 0 or peak.fp32_gmacs <= 0 or peak.bandwidth_gbs <= 0:
        fix = "run 'edgetune targets calibrate host'" if target.name == "host" else f"add [peak] figures to {target.path}"
        raise InputError(f"target {target.name} has no peak figures to estimate from", fix)
    share = _thread_share(target, threads)
    bandwidth = peak.bandwidth_gbs * 1e9
    overhead = peak.op_overhead_us * 1e-6
    total, compute_bound = peak.run_overhead_us * 1e-6, 0
    by_type: dict[str, float] = {}
    for op in ops.ops:
        compute = op.macs / (peak.rate(op.kind, op.int8) * share) if op.macs else 0.0
        memory = (op.bytes_in + op.bytes_out) / bandwidth
        seconds = max(compute, memory) + overhead
        compute_bound += compute > memory
        total += seconds
        by_type[op.op] = by_type.get(op.op, 0.0) + seconds * 1e3
    return {
        "kind": "estimated",
        "p50_ms": total * 1e3,
        "threads": threads,
        "macs": ops.macs,
        "ops": len(ops.ops),
        "compute_bound_ops": compute_bound,
        "ms_by_op_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        "model": "per-op roofline: max(MACs / peak, bytes / bandwidth) + per-op overhead, from the target profile",
        "figures": {
            "int8_gmacs": peak.int8_gmacs,
            "fp32_gmacs": peak.fp32_gmacs,
            "depthwise_int8_gmacs": peak.rate("depthwise", True) / 1e9,
            "depthwise_fp32_gmacs": peak.rate("depthwise", False) / 1e9,
            "bandwidth_gbs": peak.bandwidth_gbs,
            "op_overhead_us": peak.op_overhead_us,
            "run_overhead_us": peak.run_overhead_us,
            "thread_share": share,
            "source": peak.source,
        },
    }


def error_bar(host: Target) -> dict[str, Any] | None:
    """How the same estimator compared with measurements on this host, if it was checked."""
    check = host.estimator_check
    if not check:
        return None
    return {
        "estimate_over_measured": [check.get("min_ratio"), check.get("max_ratio")],
        "models": check.get("models", []),
        "checked": "edgetune targets calibrate host, on this host's measurements",
    }
