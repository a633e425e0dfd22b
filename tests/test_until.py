"""edgetune compress --until: pruning tightened one measured cut at a time until a budget is met."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetune.cli.main import run
from edgetune.search.netadapt import Cut, UntilConfig, _pick
from edgetune.search.trial import Outcome

# stm32h7 has no device: its latency is the target's estimate, so the steps repeat exactly
BASE = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--target", "stm32h7", "--quiet"]


def _compress(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    code = run([*BASE, *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def test_until_stops_at_the_least_pruned_model_that_meets_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--train", "digits", "--finetune", "30steps", "-o", str(out), "--until", "max_latency_p50_ms=0.5"]
    code, document, err = _compress(capsys, argv)
    assert code == 0, err
    until = document["until"]
    assert until["met"] and until["stopped"] == "met" and until == json.loads((out / "until.json").read_text())
    latencies = [step["chosen"]["figures"]["max_latency_p50_ms"] for step in until["steps"]]
    assert latencies[-1] <= 0.5 < min(latencies[:-1]), "the first model under the budget is the one kept"
    assert latencies == sorted(latencies, reverse=True) and len(latencies) >= 3
    for before, step in zip(until["steps"], until["steps"][1:]):
        lower = [c for c in step["candidates"] if not c["note"]]
        assert all(c["budget_load"] < before["chosen"]["budget_load"] for c in lower)
        assert step["chosen"]["group"] in {c["group"] for c in lower}, "only a cut that made the target faster is kept"
        # the chosen cut loses the least quality per share of the budget saved
        q0, l0 = before["chosen"]["quality"], before["chosen"]["budget_load"]
        costs = {c["group"]: (q0 - c["quality"]) / (l0 - c["budget_load"]) for c in lower}
        assert costs[step["chosen"]["group"]] == min(costs.values())
        grown = {k: v for k, v in step["chosen"]["layers"].items() if before["chosen"]["layers"].get(k) != v}
        assert list(grown) == [step["chosen"]["group"]], "a step tightens one group"
    assert document["finetune"]["steps"] == 30, "the kept model recovered with the recipe's fine-tune"
    replay = tmp_path / "replay"
    assert run(["compress", "--recipe", str(out / "recipe.toml"), "-o", str(replay), "--quiet"]) == 0
    assert (replay / "model.tflite").read_bytes() == (out / "model.tflite").read_bytes(), "the kept model replays from its recipe"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.until")], "the candidates' folders are gone"


def test_a_budget_out_of_reach_exits_1_and_keeps_the_most_pruned_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, document, err = _compress(capsys, ["-o", str(out), "--until", "max_artifact_kb=1", "--until-step", "0.5"])
    assert code == 1, err
    until = document["until"]
    assert not until["met"] and until["stopped"] in {"every group is at its floor", "no cut lowers it"}
    assert (out / "model.tflite").is_file() and (out / "until.json").is_file()
    sizes = [step["chosen"]["figures"]["max_artifact_kb"] for step in until["steps"] if step["chosen"]]
    assert sizes[-1] == min(sizes) < sizes[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--until", "min_accuracy=0.9"], "names no budget that pruning can meet"),
        (["--until", "max_latency_ms=1"], "cannot be checked"),
        (["--until", "max_latency_p50_ms=1", "--prune", "magnitude:0.5"], "prunes by magnitude"),
        (["--until", "max_latency_p50_ms=1", "--until-step", "1.5"], "not a share"),
        (["--device", "ssh://pi@board"], "--device measures the steps of --until"),
    ],
)
def test_bad_until_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    code, _, err = _compress(capsys, ["-o", str(tmp_path / "out"), *extra])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _cut(group: str, quality: float, latency: float, note: str = "") -> Cut:
    outcome = Outcome(0, {}, "", quality=quality)
    outcome.checks = [{"name": "max_latency_p50_ms", "value": latency, "limit": 1.0, "passed": latency <= 1.0}]
    return Cut({group: 0.1}, outcome, group, note)


def test_the_pick_weighs_quality_lost_against_latency_saved() -> None:
    config = UntilConfig(budget=None)  # type: ignore[arg-type]
    start = _cut("", 0.90, 2.0)
    cheap = _cut("a", 0.89, 1.9)  # 0.01 lost for 0.1 saved
    steep = _cut("b", 0.80, 1.5)  # 0.10 lost for 0.5 saved: a worse rate
    assert _pick(start, [steep, cheap], config) is cheap
    assert _pick(start, [steep, _cut("c", 0.95, 1.0, note="no lower")], config) is steep, "a cut marked not lower is never kept"
    assert _pick(start, [_cut("d", 0.9, 2.0, note="no lower")], config) is None


def test_recover_screening_fine_tunes_every_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--train", "digits", "--finetune", "20steps", "-o", str(out), "--until", "max_latency_p50_ms=0.62", "--until-screen", "recover"]
    code, document, err = _compress(capsys, argv)
    assert code == 0, err
    until = document["until"]
    assert until["screen"] == "recover" and len(until["steps"]) == 2
    # the start, then every candidate with its fine-tune: the chosen one is not compressed again
    assert until["compressions"] == 1 + len(until["steps"][1]["candidates"])
    assert document["finetune"]["steps"] == 20


def test_the_steps_keep_only_the_current_candidates_on_disk(tmp_path: Path) -> None:
    from edgetune.recipe import Recipe
    from edgetune.search import until

    out = tmp_path / "out"
    seen: list[int] = []

    def progress(done: int, total: int, label: str) -> None:
        seen.extend(len(list(workspace.iterdir())) for workspace in tmp_path.glob(".out.until.*"))

    recipe = Recipe().updated({"model.source": "edgetune.zoo:digits_cnn", "data.calib": "digits", "target": "stm32h7"}, "test")
    summary = until(recipe, out, {"max_latency_p50_ms": 0.45}, progress=progress)
    assert summary["met"] and len(summary["steps"]) >= 4 and summary["compressions"] >= 7
    assert seen and max(seen) <= 3, "the model the step starts from and this step's two candidates, no more"
    assert not list(tmp_path.glob(".out.until.*"))
