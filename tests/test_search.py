"""edgetune search: Optuna over recipe keys on SQLite, budgets as the gate checks them."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from edgetune.cli.main import run

RECIPE = """version = 1
target = "host"

[model]
source = "edgetune.zoo:digits_cnn"

[data]
calib = "digits"

[quantize]
method = "minmax"
ptq = "none"

[search]
trials = 4
seed = 3

[search.space]
"prune.ratio" = [0.0, 0.6]
"quantize.method" = ["minmax", "mse"]
"""


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "digits.toml"
    path.write_text(RECIPE)
    return path


def _search(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    code = run(["search", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def test_search_keeps_the_best_trial_that_meets_the_budgets_and_its_recipe_replays(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "search"
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--budget", "min_accuracy=0.8", "--budget", "max_artifact_kb=64"])
    assert code == 0, err
    assert summary["counts"]["trials"] == 4 and summary["met"]
    assert err.count("search ") == 4, "one progress line per trial"
    trials = {trial["number"]: trial for trial in summary["trials"]}
    best = summary["best"]
    last = [line for line in err.splitlines() if line.startswith("search 4/4")][0]
    assert last.endswith(f"(accuracy {best['quality']:.4g})") and "best so far trial" in last, last  # ties may name another trial
    feasible = [t for t in trials.values() if t["feasible"]]
    assert best["quality"] == max(t["quality"] for t in feasible) and best["quality"] >= 0.8
    for trial in trials.values():  # a trial is feasible exactly when every check passed, and the checks are the budgets
        assert {c["name"] for c in trial["checks"]} == {"min_accuracy", "max_artifact_kb"}
        assert trial["feasible"] == all(c["passed"] for c in trial["checks"])
        assert trial["latency_kind"] == "measured" and trial["latency_ms"] > 0
    assert set(summary["front"]) <= set(trials) and best["number"] in summary["front"]
    assert (out / "search.db").is_file() and json.loads((out / "search.json").read_text())["best"]["number"] == best["number"]
    replay = tmp_path / "replay"
    assert run(["compress", "--recipe", str(out / "best" / "recipe.toml"), "-o", str(replay), "--quiet"]) == 0
    assert (replay / "model.tflite").read_bytes() == (out / "best" / "model.tflite").read_bytes()


def test_no_trial_meeting_the_budgets_exits_1_with_the_closest(tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search"
    code, summary, _ = _search(capsys, [str(recipe), "-o", str(out), "--trials", "2", "--budget", "max_artifact_kb=1"])
    assert code == 1 and not summary["met"] and summary["best"] is None
    sizes = {t["number"]: t["size_kb"] for t in summary["trials"]}
    assert summary["closest"]["number"] == min(sizes, key=lambda n: sizes[n]), "the closest overshoots the size budget least"
    assert (out / "best" / "model.tflite").is_file() and (out / "best" / "recipe.toml").is_file()


def test_a_stopped_search_resumes_where_it_stopped_and_the_seed_repeats_it(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    assert _search(capsys, [str(recipe), "-o", str(first), "--trials", "2"])[0] == 0
    code, _, err = _search(capsys, [str(recipe), "-o", str(first), "--trials", "3"])
    assert code == 2 and "holds a search already" in err and "--resume" in err
    code, summary, err = _search(capsys, [str(recipe), "-o", str(first), "--trials", "3", "--resume"])
    assert code == 0, err
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2], "continued: one more trial, none repeated"
    code, straight, _ = _search(capsys, [str(recipe), "-o", str(again), "--trials", "3"])
    assert [t["params"] for t in straight["trials"]] == [t["params"] for t in summary["trials"]], "the same seed, the same trials"
    code, _, err = _search(capsys, [str(recipe), "-o", str(first), "--resume", "--space", "prune.ratio=[0.1, 0.5]"])
    assert code == 2 and "another space" in err and "--study" in err


def test_the_time_budget_holds_even_inside_a_trial(tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slow = tmp_path / "slow.toml"
    slow.write_text(RECIPE.replace('ptq = "none"', 'ptq = "adaround"\nptq_budget = 60.0'))
    start = time.monotonic()
    code, summary, _ = _search(capsys, [str(slow), "-o", str(tmp_path / "s"), "--time", "4s", "--trials", "50"])
    elapsed = time.monotonic() - start
    assert summary["stopped"] == "time" and elapsed < 4 + 3.0, elapsed  # the budget, and the results written after it
    assert summary["time"]["budget_s"] == 4.0 and summary["time"]["elapsed_s"] <= 4.5
    stopped = [t for t in summary["trials"] if t["failure"] == "stopped at the search's time budget"]
    assert len(stopped) == 1 and not (tmp_path / "s" / "trials" / f"{stopped[0]['number']:04d}").exists()
    assert code == 1 or summary["met"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", 'quantize.metod=["mse"]'], "unknown recipe key quantize.metod; did you mean quantize.method?"),
        (["--space", "prune.ratio=[0.5, 0.5]"], "the range [0.5, 0.5] is empty"),
        (["--space", 'quantize.method=["mse", "best"]'], "quantize.method"),
        (["--budget", "max_latency_p50_ms=2", "--budget", "max_latency_p90_ms=1"], "below max_latency_p50_ms"),
        (["--budget", "max_parity_lsb=1"], "max_parity_lsb cannot be checked in a search"),
        (["--target", "nosuch"], "unknown target 'nosuch'"),
        (
            ["--storage", "postgresql://edgetune:hunter2@127.0.0.1:9/search"],
            "cannot open the search storage postgresql://edgetune:***@127.0.0.1:9/search",
        ),
    ],
)
def test_bad_search_settings_fail_in_one_line_before_any_trial(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = _search(capsys, [str(recipe), "-o", str(tmp_path / "s"), *argv])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "hunter2" not in err
    assert not (tmp_path / "s" / "trials").exists()


def test_ctrl_c_keeps_the_finished_trials_and_resume_goes_on(tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import signal
    import subprocess
    import sys

    out = tmp_path / "search"
    # Many trials asked for: with the capture cached, a digits trial takes a fraction of a
    # second, and a few could all finish before the signal arrives on a loaded machine.
    argv = [sys.executable, "-m", "edgetune", "search", str(recipe), "-o", str(out), "--trials", "40"]
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert child.stderr is not None
    line = child.stderr.readline()  # the first trial's progress line: it has finished
    assert line.startswith("search 1/40"), line
    child.send_signal(signal.SIGINT)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130
    errors = [text for text in rest.splitlines() if text.startswith("error: ")]
    assert errors and "--resume" in errors[0] and len(rest.splitlines()) <= 2, rest
    kept = json.loads((out / "search.json").read_text())
    assert kept["stopped"] == "interrupted" and kept["trials"][0]["failure"] is None
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--trials", "4", "--resume"])
    assert code in (0, 1), err
    assert len(summary["trials"]) == 4 and summary["trials"][0]["params"] == kept["trials"][0]["params"]


PRUNED_RECIPE = """version = 1
target = "host"

[model]
source = "edgetune.zoo:digits_cnn"

[data]
calib = "digits"
train = "digits"

[quantize]
method = "minmax"
ptq = "none"

[finetune]
budget = "100steps"

[search]
trials = 9
seed = 1

[search.space]
"prune.ratio" = [0.0, 0.9]
"finetune.lr" = { low = 1e-5, high = 1e-2, log = true }
"""


def test_hopeless_trials_stop_early_on_the_fine_tune_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    path = tmp_path / "finetune.toml"
    path.write_text(PRUNED_RECIPE)
    out = tmp_path / "search"
    code, summary, err = _search(capsys, [str(path), "-o", str(out), "--budget", "min_accuracy=0.5"])
    assert code == 0, err
    assert summary["pruner"] == "median", "one objective and a fine-tune: the median rule by default"
    stopped = [trial for trial in summary["trials"] if trial["stopped_early"]]
    assert stopped and summary["counts"]["stopped_early"] == len(stopped) and summary["counts"]["failed"] == 0
    study = optuna.load_study(study_name="edgetune", storage=f"sqlite:///{out / 'search.db'}")
    by_number = {trial.number: trial for trial in study.trials}
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for record in stopped:
        trial = by_number[record["number"]]
        assert trial.state == optuna.trial.TrialState.PRUNED and not Path(record["folder"]).exists()
        step = trial.last_step
        assert step < max(t.last_step for t in finished), "stopped before its fine-tune ended"
        rivals = [  # the finished trials that met the budgets before this one stopped, at the same validation
            max(v for s, v in t.intermediate_values.items() if s <= step)
            for t in finished
            if t.number < trial.number and t.user_attrs["outcome"]["feasible"]
        ]
        assert len(rivals) >= 4 and max(trial.intermediate_values.values()) < statistics.median(rivals)
        assert record["failure"].startswith(f"stopped at validation {step}")
    assert all(not t["stopped_early"] for t in summary["trials"] if t["feasible"])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--pruner", "median", "--objective", "quality", "--objective", "latency"], "one objective"),
        (["--pruner", "halving"], "does not fine-tune"),
    ],
)
def test_a_pruner_that_cannot_apply_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    path = tmp_path / "finetune.toml"
    path.write_text(PRUNED_RECIPE if "latency" in extra else RECIPE)
    code, _, err = _search(capsys, [str(path), "-o", str(tmp_path / "out"), *extra])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_a_grid_search_runs_each_point_once_and_ends_with_the_grid(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid"
    space = ["--space", "prune.ratio=[0.0, 0.4]", "--space", 'quantize.method=["minmax"]']
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--sampler", "grid", "--trials", "50", *space])
    assert code == 0, err
    ratios = sorted(trial["params"]["prune.ratio"] for trial in summary["trials"])
    assert ratios == [0.0, 0.1, 0.2, 0.3, 0.4], "five evenly spaced values, each once, then the search ends"
    assert summary["stopped"] == "trials"


def test_each_layer_group_can_get_its_own_ratio(tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgetune.prune.apply import kept_count

    out = tmp_path / "layers"
    space = [
        "--space",
        "prune.layers.stem.0=[0.0, 0.6]",
        "--space",
        "prune.layers.expand.0=[0.0, 0.6]",
        "--space",
        "prune.layers.nope=[0.1, 0.2]",
    ]
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--trials", "2", "--sampler", "random", *space])
    assert code == 1 and summary["counts"]["failed"] == 2, err
    assert all("prune.layers" in t["failure"] and "nope" in t["failure"] for t in summary["trials"]), (
        "an unknown layer fails the trial, in one line"
    )
    out = tmp_path / "layers2"
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--trials", "3", "--sampler", "random", *space[:4]])
    assert code == 0, err
    for trial in summary["trials"]:
        report = json.loads((Path(trial["folder"]) / "report.json").read_text())
        multiple = report["pruning"]["config"]["channel_multiple"]
        for group in report["pruning"]["groups"]:
            if group["layers"][0] in ("stem.0", "expand.0"):
                ratio = trial["params"][f"prune.layers.{group['layers'][0]}"]
                assert group["after"] == kept_count(group["before"], ratio, multiple)


def test_agreement_of_a_pruned_trial_is_against_the_model_as_given(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "agree"
    argv = [str(recipe), "-o", str(out), "--trials", "3", "--metric", "agreement", "--space", "prune.ratio=[0.4, 0.6]"]
    code, summary, err = _search(capsys, argv)
    assert code == 0, err
    for trial in summary["trials"]:
        evaluation = json.loads((Path(trial["folder"]) / "report.json").read_text())["evaluation"]
        assert trial["quality"] == evaluation["vs_original"]["tflite"]["top1_agreement"]
        # against its own fp32 the pruned model looks far better than it is
        assert evaluation["tflite"]["top1_agreement_with_fp32"] > trial["quality"] + 0.2


def test_a_point_asked_again_is_not_compressed_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, path = tmp_path / "again", tmp_path / "two-points.toml"
    path.write_text(RECIPE.replace('"prune.ratio" = [0.0, 0.6]\n', ""))
    argv = [str(path), "-o", str(out), "--trials", "5", "--sampler", "random", "--objective", "quality", "--objective", "size"]
    code, summary, err = _search(capsys, [*argv, "--budget", "max_artifact_kb=64"])
    assert code == 0, err
    trials = {trial["number"]: trial for trial in summary["trials"]}
    repeats = [trial for trial in trials.values() if trial["repeat_of"] is not None]
    distinct = {json.dumps(trial["params"], sort_keys=True) for trial in trials.values()}
    assert len(trials) == 5 and len(repeats) == 5 - len(distinct) >= 3, "two points at most, five trials: the rest repeat"
    for trial in repeats:
        first = trials[trial["repeat_of"]]
        assert first["repeat_of"] is None and first["params"] == trial["params"]
        assert (trial["quality"], trial["size_kb"], trial["folder"], trial["feasible"]) == (
            first["quality"],
            first["size_kb"],
            first["folder"],
            first["feasible"],
        )
    assert len(list((out / "trials").iterdir())) == len(distinct)
    vectors = [(trials[n]["quality"], trials[n]["size_kb"]) for n in summary["front"]]
    assert len(vectors) == len(set(vectors)), "a point reached again shows once on the front"


def test_weight_bits_per_layer_are_searched_and_count_packed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """quantize.layer_bits.NAME = [8, 4]: a mixed-precision search (HAQ's space); a trial with
    4-bit layers counts its size with those weights packed two a byte, as a 4-bit runtime stores them."""
    recipe, out = tmp_path / "bits.toml", tmp_path / "bits"
    recipe.write_text(RECIPE.split("[search.space]")[0])  # the bits alone vary
    space = ["--space", "quantize.layer_bits.block2=[8, 4]", "--space", "quantize.layer_bits.expand=[8, 4]", "--objective", "size"]
    code, summary, err = _search(capsys, [str(recipe), "-o", str(out), "--trials", "4", "--sampler", "grid", *space])
    assert code == 0, err
    sizes = {}
    for trial in summary["trials"]:
        report = json.loads((Path(trial["folder"]) / "report.json").read_text())
        four = [name for name in ("block2", "expand") if trial["params"][f"quantize.layer_bits.{name}"] == 4]
        assert (("weights" in report["quantization"]) == bool(four)) and (trial["size_kind"] == "file") == (not four)
        sizes[tuple(four)] = trial["size_kb"]
    assert (
        sizes[("block2", "expand")] < min(sizes[("block2",)], sizes[("expand",)]) <= max(sizes[("block2",)], sizes[("expand",)]) < sizes[()]
    )
    assert summary["best"]["params"] == {"quantize.layer_bits.block2": 4, "quantize.layer_bits.expand": 4}
    code, _, err = _search(capsys, [str(recipe), "-o", str(tmp_path / "b2"), "--space", "quantize.layer_bits.block2=[8, 3]"])
    assert code == 2 and "quantize.layer_bits.block2 takes 8 or 4 (weight bits), not 3" in err, err


def test_every_group_and_layer_is_one_key_with_a_star(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """prune.layers.* and quantize.layer_bits.* stand for every prunable group and every weighted
    layer of the model; a key given on its own keeps its own range."""
    recipe = tmp_path / "star.toml"
    recipe.write_text(RECIPE.split("[search.space]")[0])
    space = ["--space", "prune.layers.*=[0.0, 0.6]", "--space", "quantize.layer_bits.*=[8, 4]", "--space", "prune.layers.stem.0=[0.0, 0.2]"]
    code, summary, err = _search(capsys, [str(recipe), "-o", str(tmp_path / "s"), "--trials", "2", "--sampler", "random", *space])
    assert code == 0, err
    keys = [dimension["key"] for dimension in summary["space"]]
    layers = ["stem.0", "block1.depthwise.0", "block1.pointwise.0", "expand.0", "block2.depthwise.0", "block2.pointwise.0", "head.2"]
    assert keys == ["prune.layers.expand.0", *(f"quantize.layer_bits.{name}" for name in layers), "prune.layers.stem.0"]
    assert all(trial["params"]["prune.layers.stem.0"] <= 0.2 for trial in summary["trials"])
