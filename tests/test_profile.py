"""The profiler: measured runs in a child process, statistics, labelled estimates, the MCU
memory plan, host calibration, adb's paths without a phone, plots."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_json

from edgetune.cli.main import run
from edgetune.profile.mcu import plan_arena
from edgetune.profile.ops import OpCost, OpList, TensorLife, read_ops
from edgetune.profile.stats import latency_summary, median_interval


def test_host_bench_measures_in_a_child_process(artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--runs", "40", "--threads", "1", "--op-profile"])
    assert code == 0, err
    assert doc["kind"] == "measured" and doc["device"] == "this host" and doc["runs"] == 40 and len(doc["times_ms"]) == 40
    assert 0 < doc["min_ms"] <= doc["p50_ms"] <= doc["p90_ms"] <= doc["p99_ms"] <= doc["max_ms"]
    low, high = doc["median_ci95_ms"]
    assert low <= doc["p50_ms"] <= high
    assert doc["memory"]["peak_rss_delta_bytes"] > 0
    assert "QLinearConv" in doc["ops"]["ms_by_op_type"], "ORT ran the convolutions on integer kernels"
    assert doc["ops"]["float_kernels"] == {} and doc["warnings"] == []
    assert "median" in doc["ops"]["statistic"] and "warm-up" in doc["ops"]["statistic"]
    by_node = sum(row["ms"] for row in doc["ops"]["ms_by_node"] if row["op"] == "QLinearConv")
    assert 0 < doc["ops"]["ms_by_op_type"]["QLinearConv"] <= doc["max_ms"] * 5 and by_node > 0
    code, doc, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--runs", "1", "--min-seconds", "0.3"])
    assert code == 0, err
    assert doc["runs"] > 1 and sum(doc["times_ms"]) > 0.2, "it kept timing for the minimum duration"
    assert doc["delegation"]["delegated"] == doc["delegation"]["ops"] and doc["warnings"] == []
    assert doc["memory_plan"]["arena_bytes"] > 0


def test_a_target_that_is_not_attached_is_estimated_and_labelled(artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--target", "raspberry-pi-5"])
    assert code == 0, err
    assert doc["kind"] == "estimated" and doc["device"] is None and "p50_ms" not in doc
    assert doc["estimate"]["p50_ms"] > 0 and doc["estimate"]["threads"] == 4
    code, human = run(["bench", str(artifacts / "model.onnx"), "--target", "stm32h7", "--quiet"]), capsys.readouterr().out
    assert code == 0 and "ESTIMATED" in human and "error bar" in human


def test_roofline_takes_the_slower_of_compute_and_memory() -> None:
    from edgetune.profile.estimate import estimate_latency
    from edgetune.targets import load_target

    target = load_target("raspberry-pi-5")
    peak = target.peak
    ops = OpList(
        "tflite",
        [
            OpCost("a", "CONV_2D", "dense", int(peak.int8_gmacs * 1e6), 1000, 1000, True),  # 1 ms of compute
            OpCost("b", "ADD", "other", 0, int(peak.bandwidth_gbs * 1e6), 0, True),  # 1 ms of memory traffic
        ],
    )
    estimate = estimate_latency(ops, target, threads=4)
    expected = 2.0 + 2 * peak.op_overhead_us / 1e3 + peak.run_overhead_us / 1e3
    assert estimate["p50_ms"] == pytest.approx(expected, rel=1e-6) and estimate["compute_bound_ops"] == 1
    assert estimate_latency(ops, target, threads=2)["p50_ms"] == pytest.approx(expected + 1.0, rel=1e-6), (
        "half the cores, twice the compute"
    )


def test_median_interval_and_summary() -> None:
    times = np.arange(1, 101, dtype=float)
    low, high = median_interval(times)
    assert low < 50.5 < high and 40 <= low and high <= 61
    summary = latency_summary(list(times), 5)
    assert summary["p50_ms"] == pytest.approx(50.5) and summary["runs"] == 100 and summary["cv"] > 0


def test_greedy_arena_reuses_memory_of_dead_tensors() -> None:
    tensors = [TensorLife("a", 100, -1, 0), TensorLife("b", 60, 0, 1), TensorLife("c", 100, 1, 2), TensorLife("d", 10, 2, 3)]
    placed = plan_arena(tensors)
    arena = max(p.offset + p.tensor.bytes for p in placed)
    assert arena == 160, "a and c never live together: they share the same bytes"
    for first in placed:
        for second in placed:
            overlap_time = first.tensor.first <= second.tensor.last and second.tensor.first <= first.tensor.last
            overlap_space = first.offset < second.offset + second.tensor.bytes and second.offset < first.offset + first.tensor.bytes
            assert first is second or not (overlap_time and overlap_space)


def test_memory_plan_of_a_real_model_and_a_board_it_does_not_fit(
    artifacts: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ops = read_ops(artifacts / "model.tflite")
    largest = max(t.bytes for t in ops.tensors)
    code, doc, _ = bench_json(capsys, [str(artifacts / "model.tflite"), "--target", "stm32h7"])
    plan = doc["memory_plan"]
    assert code == 0 and plan["fits"] and largest <= plan["arena_bytes"] <= plan["arena_without_reuse_bytes"]
    tiny = tmp_path / "tiny-mcu.toml"
    text = (Path(__file__).resolve().parents[1] / "targets" / "stm32h7.toml").read_text()
    tiny.write_text(text.replace('name = "stm32h7"', 'name = "tiny-mcu"').replace("ram_mb = 1.0", "ram_mb = 0.001"))
    code, human = run(["bench", str(artifacts / "model.tflite"), "--target", str(tiny), "--quiet"]), capsys.readouterr().out
    assert code == 0 and "does NOT fit" in human and ops.tensors[0].name in human or "largest" in human


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"\x00" * 64, "junk.tflite", "not a TFLite flatbuffer"),
        (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40, "broken.tflite", "cannot load"),
        (b"not onnx at all", "junk.onnx", "cannot load"),
    ],
)
def test_malformed_artifacts_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, name: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = bench_json(capsys, [str(path)])
    assert code == 2 and err.startswith("error: ") and expected in err and "\n" not in err, err


def test_a_run_past_its_time_cap_is_stopped(artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--runs", "1", "--min-seconds", "60", "--timeout", "2"])
    assert code == 2 and "took longer than 2 s" in err


def test_a_run_past_its_memory_cap_is_stopped(artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--runs", "1", "--min-seconds", "30", "--memory-cap", "5"])
    assert code == 2 and "used more than 5 MiB" in err and "\n" not in err


def test_calibrated_host_gives_estimates_their_error_bar(
    artifacts: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EDGETUNE_HOME", str(tmp_path))
    assert run(["targets", "calibrate", "host", "--check", "digits_cnn", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["written"]).is_file() and result["peak"]["int8_gmacs"] > result["peak"]["depthwise_int8_gmacs"] > 0
    ratios = [row["ratio"] for row in result["models"]["digits_cnn"].values()]
    assert result["estimator_check"]["min_ratio"] == pytest.approx(min(ratios), abs=1e-3)
    code, doc, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--target", "raspberry-pi-5"])
    assert code == 0 and doc["error_bar"]["models"] == ["digits_cnn"], err
    from edgetune.targets import load_target

    assert load_target("host").peak.int8_gmacs == result["peak"]["int8_gmacs"], "the user's host profile overrides the bundled one"


BENCHMARK_MODEL_OUTPUT = """STARTING!
Log parameter values verbosely: [0]
Graph: [/data/local/tmp/edgetune_model.tflite]
Loaded model /data/local/tmp/edgetune_model.tflite
The input model file size (MB): 0.0158
Initialized session in 3.1ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1250 first=410 curr=380 min=350 max=900 avg=396.2 std=31

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=2600 first=390 curr=377 min=351 max=1201 avg=385.5 std=29

Inference timings in us: Init: 3100, First inference: 410, Warmup (avg): 396.2, Inference (avg): 385.5
Peak memory footprint (MB): init=3.2 overall=4.75
"""

PROFILED_OUTPUT = """Running benchmark for at least 20 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=20 first=520 curr=500 min=480 max=640 avg=505.0 std=30

Profiling Info for Benchmark Initialization:
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t         AllocateTensors\t        1\t     0.400\t   100.000%\t   100.000%\t     0.000\t        1

Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t        4\t     0.210\t    56.000%\t    56.000%\t     0.000\t        4
\t       DEPTHWISE_CONV_2D\t        2\t     0.100\t    26.667%\t    82.667%\t     0.000\t        2
\t         FULLY_CONNECTED\t        1\t     0.065\t    17.333%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=20 first=375 curr=372 min=360 max=420 avg=375 std=12
Memory (bytes): count=0
7 nodes observed

Inference timings in us: Init: 3100, First inference: 520, Warmup (avg): 510.0, Inference (avg): 505.0
"""


def test_benchmark_model_output_is_parsed_as_its_readme_documents(artifacts: Path) -> None:
    from edgetune.profile.adb import adb_document, parse_benchmark_output
    from edgetune.profile.measure import Settings
    from edgetune.targets import load_target

    parsed = parse_benchmark_output(BENCHMARK_MODEL_OUTPUT)
    assert parsed["timings_us"]["avg"] == 385.5 and parsed["timings_us"]["count"] == 2600, "the timed runs, not the warm-up"
    assert parsed["averages_us"]["init"] == 3100 and parsed["ms_by_op_type"] == {}
    profiled = parse_benchmark_output(PROFILED_OUTPUT)
    assert profiled["timings_us"]["avg"] == 505.0, "the run's own line, not the profiler's per-op sum"
    assert profiled["ms_by_op_type"] == {"CONV_2D": 0.21, "DEPTHWISE_CONV_2D": 0.1, "FULLY_CONNECTED": 0.065}, "regular runs only"
    parsed["ms_by_op_type"] = profiled["ms_by_op_type"]
    doc = adb_document(parsed, artifacts / "model.tflite", load_target("pixel-8"), "emulator-5554", Settings(4))
    assert doc["mean_ms"] == pytest.approx(0.3855) and doc["runs"] == 2600 and doc["memory"]["peak_rss_delta_bytes"] == int(4.75 * 2**20)
    from edgetune.errors import InputError

    readme_wording = BENCHMARK_MODEL_OUTPUT.replace(
        "Inference timings in us: Init: 3100, First inference: 410, Warmup (avg): 396.2, Inference (avg): 385.5",
        "Average inference timings in us: Warmup: 396.2, Init: 3100, Inference: 385.5",
    )
    assert parse_benchmark_output(readme_wording)["averages_us"] == {"warmup": 396.2, "init": 3100, "inference": 385.5}
    with pytest.raises(InputError, match="no timings"):
        parse_benchmark_output("STARTING!\nFailed to load model\n")


def test_adb_paths_that_need_no_phone(artifacts: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("adb") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's adb (make test installs it)")
        pytest.skip("needs the adb client")
    code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", "adb:emulator-5554"])
    assert code == 2 and "no Android device 'emulator-5554' is attached" in err
    code, _, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--device", "adb:emulator-5554"])
    assert code == 2 and "adb benchmarks run .tflite" in err
    code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", "adb:bad;serial"])
    assert code == 2 and "unexpected characters" in err
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--device", "adb:emulator-5554"])
    assert code == 2 and "adb is not installed" in err


def test_plots_are_written(artifacts: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, doc, err = bench_json(capsys, [str(artifacts / "model.onnx"), "--runs", "30", "--op-profile", "--plot", str(tmp_path)])
    assert code == 0, err
    assert len(doc["plots"]) == 2 and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in doc["plots"])


def test_a_profile_without_capacities_says_unknown(artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = bench_json(capsys, [str(artifacts / "model.tflite"), "--runs", "5"])
    assert code == 0, err
    assert doc["memory_plan"]["fits"] is None and doc["memory_plan"]["fits_sram"] is None, "the host profile sets no RAM size"


@pytest.mark.parametrize(
    ("target", "expected", "absent"),
    [
        ("stm32h7", "KiB SRAM", "GiB"),
        ("raspberry-pi-5", "GiB RAM", "KiB SRAM"),
    ],
)
def test_memory_plans_speak_the_boards_units(
    digits_out: Path, capsys: pytest.CaptureFixture[str], target: str, expected: str, absent: str
) -> None:
    from edgetune.cli.main import run

    assert run(["bench", str(digits_out / "model.tflite"), "--target", target]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("memory plan"))
    assert expected in line and absent not in line and "(0 " not in line, line


def test_the_latency_histogram_stays_tight_around_the_runs() -> None:
    """A few slow outliers (100x) do not stretch the axis over every other run: it ends a little
    past the 99th percentile, and the runs beyond are counted, not drawn."""
    from edgetune.profile.plots import latency_range

    times = [0.1 + 0.001 * (i % 10) for i in range(200)] + [12.0]
    low, high, beyond = latency_range(times)
    assert low == pytest.approx(0.1) and high < 0.12 and beyond == 1
    assert latency_range([0.5] * 20)[1] > 0.5  # equal runs still get a range


def test_the_sensitivity_plot_names_every_layer_or_the_most_sensitive() -> None:
    pytest.importorskip("matplotlib")
    from edgetune.quantize.sensitivity import SHOWN, sensitivity_png, shown_rows

    rows = [{"layer": f"blocks.{i}.conv", "op": "conv2d", "sqnr_db": float(60 - (i * 7) % 53)} for i in range(SHOWN + 20)]
    kept = shown_rows(rows)
    assert len(kept) == SHOWN and min(r["sqnr_db"] for r in rows) == min(r["sqnr_db"] for r in kept)
    assert max(r["sqnr_db"] for r in kept) <= sorted(r["sqnr_db"] for r in rows)[SHOWN - 1]  # the lowest ones
    assert [r["layer"] for r in kept] == [r["layer"] for r in rows if r in kept]  # still in execution order
    assert shown_rows(rows[:5]) == rows[:5]
    assert sensitivity_png(rows, "t")[:8] == b"\x89PNG\r\n\x1a\n"


def test_convolutions_that_run_in_float_in_an_int8_onnx_are_warned_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--keep-float", "expand", "-o", str(tmp_path), "--quiet"]
    assert run(argv) == 0
    capsys.readouterr()
    code, doc, err = bench_json(capsys, [str(tmp_path / "model.onnx"), "--runs", "10", "--op-profile"])
    assert code == 0, err
    assert doc["ops"]["float_kernels"] and sum(doc["ops"]["float_kernels"].values()) == 1
    assert any("ran in float in this int8 model" in w for w in doc["warnings"])
