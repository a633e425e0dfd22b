"""The release gate: decision logic on recorded measurements, budgets that pass and fail,
baseline comparison, CI outputs, and one live run of the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from edgetune.cli.main import run
from edgetune.gate.stats import latency_regression, mann_whitney_greater


def test_mann_whitney_exact_p_values() -> None:
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == (9.0, pytest.approx(1 / 20))
    assert mann_whitney_greater([1, 2, 3], [4, 5, 6])[1] == pytest.approx(1.0)
    u, p = mann_whitney_greater(list(range(10, 19)), list(range(9)))
    assert u == 81 and p == pytest.approx(1 / math.comb(18, 9)), "complete separation of 9 and 9"


def _medians(rng: np.random.Generator, centre: float, cv: float, n: int = 9) -> list[float]:
    return list(centre * (1 + cv * rng.standard_normal(n)))


def test_a_real_slowdown_fails_and_noise_does_not() -> None:
    rng = np.random.default_rng(0)
    base = _medians(rng, 10.0, 0.01)
    assert latency_regression(base, _medians(rng, 11.0, 0.01)).regressed, "10% slower, 1% noise"
    assert not latency_regression(base, _medians(rng, 10.2, 0.01)).regressed, "2% is below the 5% floor"
    spread = [0.85, 0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.15, 1.0]  # a CV near 9%
    noisy = latency_regression([10 * f for f in spread], [11.5 * f for f in spread[::-1]])
    assert noisy.threshold > 0.2 and noisy.slowdown == pytest.approx(0.15) and not noisy.regressed, "15% inside 3x a 7% CV is not large"
    steady = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 10.1, 9.9, 10.0]
    disturbed = [*steady[:-1], 14.0]  # one repetition hit by another process
    verdict = latency_regression(disturbed, [11.5 * v / 10 for v in steady])
    assert verdict.noise_cv < 0.02 and verdict.regressed, "one bad repetition does not hide a 15% slowdown"


def test_unchanged_builds_pass_where_a_plain_two_percent_gate_flips_coins() -> None:
    rng = np.random.default_rng(1)
    ours, naive = 0, 0
    for _ in range(200):
        base, new = _medians(rng, 10.0, 0.027), _medians(rng, 10.0, 0.027)
        ours += latency_regression(base, new).regressed
        naive += np.median(new) / np.median(base) - 1 > 0.02 or np.median(base) / np.median(new) - 1 > 0.02
    assert ours == 0 and naive > 40


def _repetition(rng: np.random.Generator, cost: float, disturbed: float) -> dict:  # type: ignore[type-arg]
    """One repetition's bench document: 200 inferences of ``cost`` ms with 1% jitter, a share
    ``disturbed`` of them delayed by a neighbour on the same core (70-100% longer)."""
    times = cost * (1 + 0.01 * rng.standard_normal(200))
    hit = rng.random(200) < disturbed
    times[hit] *= 1.7 + 0.3 * rng.random(int(hit.sum()))
    return {"times_ms": list(times), "memory": {"peak_rss_delta_bytes": None}, "runtime": "r", "threads": 1}


def test_low_quantile_repetitions_see_through_a_neighbour_that_medians_do_not() -> None:
    from edgetune.gate.run import _Series

    shares = [0.0, 0.3, 0.6, 0.8]  # the neighbour comes and goes: the share of inferences it delays
    wrong = {0.1: 0, 0.5: 0}
    for quantile in wrong:
        for seed in range(10):
            rng = np.random.default_rng(seed)
            base, same, slower = _Series(quantile), _Series(quantile), _Series(quantile)
            for _ in range(9):
                for series, cost in ((base, 5.0), (same, 5.0), (slower, 5.5)):
                    series.add(_repetition(rng, cost, rng.choice(shares)))
            unchanged, ten_percent = latency_regression(base.lows, same.lows), latency_regression(base.lows, slower.lows)
            wrong[quantile] += unchanged.regressed + (not ten_percent.regressed)
            if quantile == 0.1:
                assert unchanged.noise_cv < 0.02 and ten_percent.slowdown == pytest.approx(0.10, abs=0.02)
        assert base.figures()["repetition_statistic"] == ("p10" if quantile == 0.1 else "median")
    assert wrong[0.1] == 0 and wrong[0.5] >= 5, f"wrong verdicts out of 20: {wrong}"


CONFIG = """
[recipe]
model = "edgetune.zoo:digits_cnn"
calib = "digits"
eval = "digits:test"
out = "{out}"

[gate]
repetitions = 9
repetition_seconds = 1.0

[targets.host]
min_accuracy = {min_accuracy}
max_accuracy_drop_pp = 1.0
max_latency_p50_ms = {p50}
min_tflite_onnx_agreement = 0.99
all_ops_delegated = true
max_artifact_kb = 100

[targets.stm32h7]
max_arena_kb = 256
max_flash_kb = 1024
"""


def _recorded(medians: list[float]) -> dict:  # type: ignore[type-arg]
    figures = {
        "kind": "measured",
        "repetition_medians_ms": medians,
        "repetition_statistic": "p10",
        "repetition_ms": medians,
        "p50_ms": float(np.median(medians)),
        "p90_ms": max(medians),
    }
    plan = {"arena_bytes": 4096, "flash_bytes": 16000}
    return {
        "measurements": {
            "host": {"model.onnx": figures, "model.tflite": {**figures, "memory_plan": plan}},
            "stm32h7": {"model.tflite": {"kind": "estimated", "p50_ms": 0.7, "memory_plan": plan}},
        }
    }


def _gate(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path, argv: list[str], **budgets: float) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    values = {"min_accuracy": 0.9, "p50": 5.0, **budgets}
    (tmp_path / "edgetune.toml").write_text(CONFIG.format(out=tmp_path / "out", **values))
    code = run(
        ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(digits_out / "report.json"), *argv, "--json", "--quiet"]
    )
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def test_budgets_that_pass_and_budgets_that_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path) -> None:
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps(_recorded([0.05] * 9)))
    code, doc, _ = _gate(tmp_path, capsys, digits_out, ["--measurements", str(recorded), "--junit", str(tmp_path / "junit.xml")])
    assert code == 0 and doc["passed"] and {c["name"] for c in doc["checks"]} >= {"min_accuracy", "max_latency_p50_ms", "max_arena_kb"}
    code, doc, _ = _gate(
        tmp_path,
        capsys,
        digits_out,
        ["--measurements", str(recorded), "--junit", str(tmp_path / "junit.xml")],
        min_accuracy=0.999,
        p50=0.01,
    )
    assert code == 1 and not doc["passed"]
    assert sorted(doc["failed"]) == [
        "host: max_latency_p50_ms (model.onnx)",
        "host: max_latency_p50_ms (model.tflite)",
        "host: min_accuracy",
    ]
    suites = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("failures") == "3" and len(suites.findall(".//testcase")) == len(doc["checks"])
    assert {s.get("name") for s in suites.findall("testsuite")} == {"edgetune gate: host", "edgetune gate: stm32h7"}


def test_baseline_comparison_on_recorded_measurements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    base, same, slower = (tmp_path / f"{n}.json" for n in ("base", "same", "slower"))
    base.write_text(json.dumps({**_recorded(_medians(rng, 0.050, 0.02)), "accuracy": 0.98}))
    same.write_text(json.dumps(_recorded(_medians(rng, 0.050, 0.02))))
    slower.write_text(json.dumps(_recorded(_medians(rng, 0.060, 0.02))))
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, doc, _ = _gate(tmp_path, capsys, digits_out, ["--measurements", str(same), "--baseline", str(base)])
    assert code == 0, doc["failed"]
    assert any(c["name"] == "latency_regression" for c in doc["checks"])
    code, doc, _ = _gate(tmp_path, capsys, digits_out, ["--measurements", str(slower), "--baseline", str(base)])
    assert code == 1 and doc["failed"] == ["host: latency_regression (model.onnx)", "host: latency_regression (model.tflite)"]
    assert "❌ **FAIL**" in summary.read_text() and summary.read_text().count("### edgetune gate") == 2
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps({**json.loads(base.read_text()), "accuracy": 1.0}))
    code, doc, _ = _gate(tmp_path, capsys, digits_out, ["--measurements", str(same), "--baseline", str(worse)])
    assert code == 1 and doc["failed"] == ["all: accuracy_regression_pp"]


@pytest.mark.parametrize(
    ("text", "argv", "expected"),
    [
        ("[targets.host]\nmax_latncy_p50_ms = 1\n", [], "unknown keys: max_latncy_p50_ms"),
        ("[recipe]\nmodel = 'x'\n", [], "sets no budgets"),
        ("[targets.host]\nmin_accuracy = 'high'\n", [], "must be a finite, non-negative number"),
        ("[targets.host]\nmin_accuracy = 0.5\n", ["--update-baseline"], "--update-baseline needs --baseline"),
        ("[targets.host]\nmin_accuracy = 0.5\n", ["--report", "missing.json"], "does not exist"),
        ("[gate]\nrepetitions = 4\n[targets.host]\nmin_accuracy = 0.5\n", [], "no regression could ever be detected"),
        ("[gate]\nregression_quantile = 0.9\n[targets.host]\nmin_accuracy = 0.5\n", [], "regression_quantile must be in (0, 0.5]"),
        ("[targets.host]\nmax_parity_lsb = 1\n", [], "needs a board to compare with"),
        ("[targets.host]\ndevice = 3\nmin_accuracy = 0.5\n", [], "device and ssh_config must be strings"),
    ],
)
def test_bad_configs_are_usage_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str], text: str, argv: list[str], expected: str) -> None:
    (tmp_path / "edgetune.toml").write_text(text)
    code = run(["gate", "--config", str(tmp_path / "edgetune.toml"), *argv, "--quiet"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and expected in err and "\n" not in err, err


def test_live_gate_runs_the_recipe_measures_and_writes_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path("pyproject.toml").write_text(
        '[tool.edgetune.recipe]\nmodel = "edgetune.zoo:digits_cnn"\ncalib = "digits"\neval = "digits:test"\nformats = "onnx,tflite"\n'
        "[tool.edgetune.gate]\nrepetitions = 3\nrepetition_seconds = 0.2\nalpha = 0.1\nmin_slowdown = 0.5\n[tool.edgetune.targets.host]\nmin_accuracy = 0.9\nmax_peak_memory_mb = 500\n"
    )
    assert run(["gate", "--baseline", "baseline.json", "--update-baseline", "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] and Path("out/gate/report.json").is_file() and doc["notes"], "fewer than 9 x 1 s is flagged"
    figures = doc["measurements"]["host"]["model.tflite"]
    medians, lows = figures["repetition_medians_ms"], figures["repetition_ms"]
    assert len(medians) == 3 and all(0 < low <= m for low, m in zip(lows, medians)) and figures["repetition_statistic"] == "p10"
    written = json.loads(Path("baseline.json").read_text())
    assert written["measurements"]["host"]["model.onnx"]["repetition_medians_ms"]
    assert [p.name for p in Path("baseline.artifacts").iterdir()] == [written["artifacts"]], "one complete set, named by the document"
    assert {p.name for p in (Path("baseline.artifacts") / written["artifacts"]).iterdir()} == {"model.onnx", "model.tflite"}
    # Live timings decide this run: only a slowdown over 50% (min_slowdown) could fail it, not noise.
    assert run(["gate", "--baseline", "baseline.json", "--report", "out/gate/report.json", "--json", "--quiet"]) == 0
    regressions = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "latency_regression"]
    assert len(regressions) == 2 and all(
        c["detail"].startswith("baseline artifacts re-measured in this run, interleaved") for c in regressions
    )


def test_the_example_config_is_valid() -> None:
    from edgetune.gate import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "ci" / "edgetune.toml")
    assert [t.name for t in config.targets] == ["host", "stm32h7", "raspberry-pi-4"] and config.repetitions == 9 and not config.notes


def test_a_budget_without_a_figure_fails_and_so_does_an_incomparable_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path
) -> None:
    recorded = _recorded([0.05] * 9)
    recorded["measurements"]["stm32h7"]["model.tflite"]["p90_ms"] = None
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    config = CONFIG.format(out=tmp_path / "out", min_accuracy=0.9, p50=5.0) + "max_latency_p90_ms = 10\n"
    (tmp_path / "edgetune.toml").write_text(config)
    argv = ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(digits_out / "report.json"), "--json", "--quiet"]
    assert run([*argv, "--measurements", str(tmp_path / "recorded.json")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == ["stm32h7: max_latency_p90_ms (model.tflite)"]
    assert next(c for c in doc["checks"] if not c["passed"])["kind"] == "unavailable"

    (tmp_path / "edgetune.toml").write_text(CONFIG.format(out=tmp_path / "out", min_accuracy=0.9, p50=5.0))
    here, there = _recorded([0.05] * 9), _recorded([0.05] * 9)
    for figures in here["measurements"]["host"].values():
        figures.update(runtime="onnxruntime 1.32.0", threads=2, machine={"cpu": "this CPU"})
    for figures in there["measurements"]["host"].values():
        figures.update(runtime="onnxruntime 1.32.0", threads=2, machine={"cpu": "another CPU"})
    (tmp_path / "here.json").write_text(json.dumps(here))
    (tmp_path / "there.json").write_text(json.dumps(there))
    assert run([*argv, "--measurements", str(tmp_path / "here.json"), "--baseline", str(tmp_path / "there.json")]) == 1
    failed = [c for c in json.loads(capsys.readouterr().out)["checks"] if not c["passed"]]
    assert {c["name"] for c in failed} == {"latency_regression"} and all("not comparable" in c["detail"] for c in failed)
    for figures in there["measurements"]["host"].values():
        figures.update(machine={"cpu": "this CPU"}, repetition_statistic="median")
    (tmp_path / "there.json").write_text(json.dumps(there))
    assert run([*argv, "--measurements", str(tmp_path / "here.json"), "--baseline", str(tmp_path / "there.json")]) == 1
    failed = [c for c in json.loads(capsys.readouterr().out)["checks"] if not c["passed"]]
    assert all("another repetition_statistic" in c["detail"] for c in failed) and len(failed) == 2


def test_disturbed_repetitions_are_set_aside_and_more_are_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replays recorded bench documents: a neighbour spoils whole repetitions of the baseline
    (twice the time), and the gate measures on until 9 undisturbed ones are left on each side."""
    import edgetune.profile
    from edgetune.gate.config import GateConfig, TargetBudgets
    from edgetune.gate.run import measure
    from edgetune.gate.stats import interference_free

    assert interference_free([5.0, 5.1, 4.9, 5.0, 10.0, 9.5]) == [5.0, 5.1, 4.9, 5.0], "only the slow ones go"
    assert interference_free([5.0, 5.0, 5.0, 4.0]) == [5.0, 5.0, 5.0, 4.0], "a fast repetition is never interference"
    rng = np.random.default_rng(5)
    calls: dict[str, int] = {"base": 0, "new": 0}

    def recorded(request):  # type: ignore[no-untyped-def]
        side = "base" if "baseline" in str(request.artifact) else "new"
        calls[side] += 1
        disturbed = side == "base" and calls[side] % 3 == 0  # every third baseline repetition
        cost = (5.0 if side == "base" else 5.5) * (2.0 if disturbed else 1.0)
        return [_repetition(rng, cost, 0.0) | {"mean_ms": cost, "machine": None}]

    monkeypatch.setattr(edgetune.profile, "bench", recorded)
    for folder in ("new", "baseline"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.tflite").write_bytes(b"")
    config = GateConfig(recipe={}, targets=(TargetBudgets("host", {}),), artifacts=("model.tflite",))
    measured, baseline = measure(config, tmp_path / "new", baseline_folder=tmp_path / "baseline")
    base_reps = baseline["host"]["model.tflite"]["repetition_ms"]
    assert len(base_reps) == 13 and len(interference_free(base_reps)) == 9, "extended until 9 clean baseline repetitions"
    verdict = latency_regression(base_reps, measured["host"]["model.tflite"]["repetition_ms"])
    assert verdict.regressed and verdict.set_aside == (4, 4) and verdict.slowdown == pytest.approx(0.10, abs=0.01)


def test_a_microcontroller_target_is_measured_on_tflite_only_and_a_failing_build_records_no_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_out: Path
) -> None:
    """The example's shape: both artifacts, an MCU target with memory budgets. An ONNX file is
    never a microcontroller's artifact, so it gets no figures there (it used to fail as n/a)."""
    config = (
        "[gate]\nartifacts = ['model.onnx', 'model.tflite']\n"
        "[targets.stm32h7]\nmax_latency_p50_ms = 50\nmax_arena_kb = 256\nmax_flash_kb = 1024\n"
    )
    (tmp_path / "edgetune.toml").write_text(config)
    argv = ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(digits_out / "report.json"), "--json", "--quiet"]
    assert run([*argv, "--baseline", str(tmp_path / "baseline.json"), "--update-baseline"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["measurements"]["stm32h7"]) == ["model.tflite"] and doc["passed"]
    assert {c["artifact"] for c in doc["checks"]} == {"model.tflite"} and (tmp_path / "baseline.json").is_file()

    (tmp_path / "edgetune.toml").write_text(config.replace("max_arena_kb = 256", "max_arena_kb = 0.001"))
    assert run([*argv, "--baseline", str(tmp_path / "new-baseline.json"), "--update-baseline"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == ["stm32h7: max_arena_kb (model.tflite)"] and "passing build" in doc["baseline_not_written"]
    assert not (tmp_path / "new-baseline.json").exists()


def test_embedding_budgets_take_the_worse_artifact(tmp_path: Path) -> None:
    from edgetune.gate.config import TargetBudgets
    from edgetune.gate.run import report_checks

    budget = TargetBudgets("host", {"min_cosine": 0.995, "min_neighbour_agreement": 0.9})
    report = {
        "evaluation": {
            "int8_vs_fp32": {"cosine_mean": 0.999, "neighbour_agreement": 0.95},
            "tflite": {"vs_fp32": {"cosine_mean": 0.99, "neighbour_agreement": 0.97}},
        }
    }
    checks = {check.name: check for check in report_checks(budget, report, tmp_path)}
    assert checks["min_cosine"].value == 0.99 and not checks["min_cosine"].passed, "TFLite's lower cosine decides"
    assert checks["min_neighbour_agreement"].value == 0.95 and checks["min_neighbour_agreement"].passed
