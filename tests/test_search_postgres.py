"""Distributed search: a real PostgreSQL server on loopback (initdb into a temporary folder),
three worker processes on one study, one of them killed in the middle of a trial."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_search import RECIPE as SEARCH_RECIPE

# the search tests' recipe: six trials over the pruning ratio, heartbeats every second
RECIPE = SEARCH_RECIPE.replace("trials = 4\nseed = 3", "trials = 6\nheartbeat = 1").replace('"quantize.method" = ["minmax", "mse"]\n', "")


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user() -> dict[str, str]:
    """initdb and postgres refuse to run as root: as root, run them as Debian's postgres user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    binaries = _postgres_bin()
    if binaries is None or (os.geteuid() == 0 and not _has_user("postgres")):
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's postgresql (make test installs it)")
        pytest.skip("needs Debian's postgresql (make test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="edgetune-pg-"))  # pytest's own folders are closed to the postgres user
    data, sockets = folder / "data", folder / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    password = folder / "pw"
    password.write_text("s3cret\n")
    os.chmod(password, 0o644)
    init = [str(binaries / "initdb"), "-D", str(data), "-U", "edgetune", "--auth=scram-sha-256", f"--pwfile={password}", "-E", "UTF8"]
    subprocess.run(init, check=True, capture_output=True, **_as_server_user())
    port = _free_port()
    server = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_as_server_user(),
    )
    url = f"postgresql+psycopg2://edgetune:s3cret@127.0.0.1:{port}/postgres"
    _wait_for(port)
    yield url
    server.send_signal(signal.SIGINT)  # fast shutdown
    server.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)
                return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL did not start")


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
    url = f"postgresql+psycopg2://edgetune:s3cret@127.0.0.1:{_free_port()}/postgres"
    done = subprocess.run(
        [sys.executable, "-m", "edgetune", "search", str(recipe), "-o", str(tmp_path / "o"), "--storage", url, "--worker"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "edgetune:***@127.0.0.1" in done.stderr and "s3cret" not in done.stderr
