"""``edgetune targets calibrate host``: measure this host's peak figures, and check the
roofline estimator against real measurements of the zoo models.

Peaks come from micro-benchmarks in ONNX Runtime, the runtime edgetune's host artifacts use:
a large 1x1 convolution (dense) and a 3x3 depthwise convolution, int8 (QDQ, the activation
type the host target uses) and fp32; memory bandwidth from a large numpy copy. They are
never fitted to model latencies. Then each zoo model is compressed, measured, and estimated
from those figures: the ratios estimate/measured are the estimator's error bar, stored in
the profile and printed with every estimate.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.progress import Progress, silent
from edgetune.targets import Target, load_target, usable_cores, user_dir

MICRO = {"dense": (256, 28, 1, 1), "depthwise": (256, 56, 3, 256)}  # channels, size, kernel, groups
CHECK_MODELS = ("digits_cnn", "resnet8", "ds_cnn", "mobilenet_v2", "efficientnet_lite0")


def _conv_model(channels: int, size: int, kernel: int, groups: int, int8: bool, unsigned: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels // groups, kernel, kernel)).astype(np.float32) * 0.1
    nodes, inits = [], [numpy_helper.from_array(np.zeros(channels, np.float32), "b")]
    conv_in, weight_name, conv_out = "x", "w", "y"
    if int8:
        zero = np.uint8(128) if unsigned else np.int8(0)
        scale = np.maximum(np.abs(weight).reshape(channels, -1).max(1) / 127, 1e-6).astype(np.float32)
        levels = np.clip(np.round(weight / scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(levels, "w_q"),
            numpy_helper.from_array(scale, "w_s"),
            numpy_helper.from_array(np.zeros(channels, np.int8), "w_z"),
            numpy_helper.from_array(np.array(0.05, np.float32), "a_s"),
            numpy_helper.from_array(np.array(zero), "a_z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_z"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], axis=0),
        ]
        conv_in, weight_name, conv_out = "x_dq", "w_dq", "c"
        nodes += [
            helper.make_node("QuantizeLinear", ["c", "a_s", "a_z"], ["c_q"]),
            helper.make_node("DequantizeLinear", ["c_q", "a_s", "a_z"], ["y"]),
        ]
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    pad = kernel // 2
    nodes.insert(
        len(nodes) - (2 if int8 else 0), helper.make_node("Conv", [conv_in, weight_name, "b"], [conv_out], group=groups, pads=[pad] * 4)
    )
    graph = helper.make_graph(
        nodes,
        "micro",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _chain_model(length: int, unsigned: bool) -> bytes:
    """``length`` tiny int8 convolutions (QDQ) in a row: their time is almost all per-op overhead."""
    from onnx import TensorProto, helper, numpy_helper

    zero = np.uint8(128) if unsigned else np.int8(0)
    inits = [
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
        numpy_helper.from_array(np.array(0.05, np.float32), "a_s"),
        numpy_helper.from_array(np.array(zero), "a_z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
        helper.make_node("QuantizeLinear", ["t0", "a_s", "a_z"], ["q0"]),
    ]
    for i in range(length):
        nodes += [
            helper.make_node("DequantizeLinear", [f"q{i}", "a_s", "a_z"], [f"d{i}"]),
            helper.make_node("Conv", [f"d{i}", "w"], [f"c{i}"]),
            helper.make_node("QuantizeLinear", [f"c{i}", "a_s", "a_z"], [f"q{i + 1}"]),
        ]
    nodes.append(helper.make_node("DequantizeLinear", [f"q{length}", "a_s", "a_z"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        inits,
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _median_seconds(run: Callable[[], Any], repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def micro_peaks(threads: int, unsigned: bool) -> dict[str, float]:
    import onnxruntime as ort

    figures: dict[str, float] = {}
    for kind, (channels, size, kernel, groups) in MICRO.items():
        macs = channels * size * size * (channels // groups) * kernel * kernel
        for int8 in (True, False):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            session = ort.InferenceSession(
                _conv_model(channels, size, kernel, groups, int8, unsigned), options, providers=["CPUExecutionProvider"]
            )
            x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
            seconds = _median_seconds(partial(session.run, None, {"x": x}))
            key = ("" if kind == "dense" else "depthwise_") + ("int8" if int8 else "fp32") + "_gmacs"
            figures[key] = round(macs / seconds / 1e9, 3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    tiny = np.ones((1, 4, 2, 2), np.float32)
    chain = {n: ort.InferenceSession(_chain_model(n, unsigned), options, providers=["CPUExecutionProvider"]) for n in (1, 64)}
    one, many = (_median_seconds(partial(chain[n].run, None, {"t0": tiny}), repeats=300) for n in (1, 64))
    per_op = (many - one) / 63
    figures["op_overhead_us"] = round(per_op * 1e6, 3)
    figures["run_overhead_us"] = round(max(one - per_op, 0.0) * 1e6, 3)
    source = np.ones(32 * 2**20, np.float32)  # 128 MiB, far beyond any cache
    target = np.empty_like(source)
    seconds = _median_seconds(lambda: np.copyto(target, source), repeats=7, warmup=2)
    figures["bandwidth_gbs"] = round(2 * source.nbytes / seconds / 1e9, 3)
    return figures


# Writes a zoo model's int8 artifacts (model.onnx, model.tflite) for a target into a folder. The
# caller passes it: the profiler measures artifacts and never runs the compression pipeline.
BuildArtifacts = Callable[[str, Target, Path], None]


def _check_model(name: str, host: Target, threads: int, out: Path, build: BuildArtifacts) -> dict[str, Any]:
    """One zoo model's artifacts, measured and estimated."""
    from edgetune.profile.estimate import estimate_latency
    from edgetune.profile.measure import Settings, run_local
    from edgetune.profile.ops import read_ops
    from edgetune.profile.stats import latency_summary

    build(name, host, out / name)
    rows = {}
    for artifact in ("model.onnx", "model.tflite"):
        path = out / name / artifact
        measured = latency_summary(run_local(path, Settings(threads, runs=50, min_seconds=1.0))["times_ms"], 10)["p50_ms"]
        estimated = estimate_latency(read_ops(path), host, threads)["p50_ms"]
        rows[artifact] = {"measured_ms": measured, "estimated_ms": estimated, "ratio": estimated / measured}
    return rows


def calibrate_host(
    build: BuildArtifacts, check: tuple[str, ...] = CHECK_MODELS, progress: Progress = silent
) -> tuple[Path, dict[str, Any]]:
    """Measure, check (on zoo models whose artifacts ``build`` writes), and write
    ``<user dir>/host.toml``; returns its path and contents."""
    from dataclasses import replace

    from edgetune import zoo
    from edgetune.errors import InputError

    unknown = [name for name in check if not callable(getattr(zoo, name, None))]
    if unknown:
        raise InputError(f"--check names unknown zoo models: {', '.join(unknown)}", f"use some of {', '.join(CHECK_MODELS)}")
    bundled = load_target("host")
    threads = usable_cores()
    progress(0, len(check) + 1, "host micro-benchmarks")
    peaks = micro_peaks(threads, bundled.unsigned_activations)
    progress(1, len(check) + 1, "host micro-benchmarks")
    source = f"measured by edgetune targets calibrate host on {platform.machine()} with {threads} thread(s), ONNX Runtime convolutions and a numpy copy"
    host = replace(bundled, peak=replace(bundled.peak, **peaks, threads=threads, source=source))  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for done, name in enumerate(check, 2):
            results[name] = _check_model(name, host, threads, Path(tmp), build)
            progress(done, len(check) + 1, "estimator check")
    ratios = [row["ratio"] for rows in results.values() for row in rows.values()]
    check_block = {"min_ratio": round(min(ratios), 3), "max_ratio": round(max(ratios), 3), "models": sorted(results)} if ratios else {}
    path = user_dir() / "host.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _profile_text(bundled, peaks, threads, source, check_block)
    temporary = path.with_suffix(".toml.tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path, {"peak": {**peaks, "threads": threads}, "estimator_check": check_block, "models": results}


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _profile_text(bundled: Target, peaks: dict[str, float], threads: int, source: str, check: dict[str, Any]) -> str:
    original = Path(bundled.path).read_text()
    head = original.split("[peak]")[0].rstrip()
    lines = [
        "# Written by 'edgetune targets calibrate host': the bundled host profile with measured peaks.",
        head,
        "",
        "[peak]",
        *(f"{key} = {_toml_value(value)}" for key, value in peaks.items()),
        f"threads = {threads}",
        f"source = {_toml_value(source)}",
        "",
        "[estimator_check]",
        *(f"{key} = {_toml_value(value)}" for key, value in check.items()),
        "",
        "[budgets]",
        "",
    ]
    return "\n".join(lines)
