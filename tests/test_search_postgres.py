"""Distributed search: a real PostgreSQL server on loopback (initdb into a temporary folder),
three worker processes on one study, one of them killed in the middle of a trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import Unavailable, free_port, running_postgres
from test_search import RECIPE as SEARCH_RECIPE

# the search tests' recipe: six trials over the pruning ratio, heartbeats every second
RECIPE = SEARCH_RECIPE.replace("trials = 4\nseed = 3", "trials = 6\nheartbeat = 1").replace('"quantize.method" = ["minmax", "mse"]\n', "")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with running_postgres() as url:
            yield url
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI {exc}")
        pytest.skip(str(exc))


def _worker(recipe: Path, out: Path, url: str, study: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "edgetune",
        "search",
        str(recipe),
        "-o",
        str(out),
        "--storage",
        url,
        "--study",
        study,
        "--worker",
        "--json",
    ]
    out.mkdir()
    return subprocess.Popen(argv, stdout=(out.parent / f"{out.name}.json").open("wb"), stderr=(out.parent / f"{out.name}.err").open("wb"))


def _running(url: str, study: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    except KeyError:  # not created yet
        return 0
    except Exception as exc:  # the workers and this check race to create the tables
        if "IntegrityError" in type(exc).__name__:
            return 0
        raise


def test_three_workers_share_one_study_and_a_killed_worker_loses_no_trial(tmp_path: Path, postgres: str) -> None:
    recipe = tmp_path / "digits.toml"
    recipe.write_text(RECIPE)
    workers = [_worker(recipe, tmp_path / f"w{i}", postgres, "killed") for i in range(3)]
    deadline = time.monotonic() + 90
    while _running(postgres, "killed") < 3 and time.monotonic() < deadline:  # every worker is inside a trial
        assert all(worker.poll() is None for worker in workers), (tmp_path / "w0.err").read_text()
        time.sleep(0.2)
    assert _running(postgres, "killed") == 3, (tmp_path / "w0.err").read_text()
    time.sleep(0.5)  # inside its trial: past the first heartbeat
    workers[0].kill()
    workers[0].wait()
    for index, worker in enumerate(workers[1:], start=1):
        worker.wait(timeout=600)
        assert worker.returncode in (0, 1), (tmp_path / f"w{index}.err").read_text()[-2000:]
    summary = json.loads((tmp_path / "w2.json").read_text())
    numbers = [trial["number"] for trial in summary["trials"]]
    assert len(numbers) == 6 == len(set(numbers)), "six trials finished, none counted twice"
    assert all(trial["failure"] is None for trial in summary["trials"]), summary["trials"]
    import optuna

    study = optuna.load_study(study_name="killed", storage=postgres)
    states = [trial.state.name for trial in study.get_trials()]
    retried = [t for t in study.get_trials() if "failed_trial" in t.system_attrs]
    lost = [t for t in study.get_trials() if t.state.name == "FAIL" and "outcome" not in t.user_attrs]
    assert states.count("RUNNING") == 0 and states.count("WAITING") == 0, states
    for failed in lost:  # the killed worker's trial ran again on another worker, with the same recipe keys
        again = [t for t in retried if t.system_attrs["failed_trial"] == failed.number]
        assert again and again[0].params == failed.params and "outcome" in again[0].user_attrs


def test_an_unreachable_database_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    recipe = tmp_path / "digits.toml"
    recipe.write_text(RECIPE)
    url = f"postgresql+psycopg2://edgetune:s3cret@127.0.0.1:{free_port()}/postgres"
    done = subprocess.run(
        [sys.executable, "-m", "edgetune", "search", str(recipe), "-o", str(tmp_path / "o"), "--storage", url, "--worker"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "edgetune:***@127.0.0.1" in done.stderr and "s3cret" not in done.stderr
