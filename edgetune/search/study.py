"""The search loop on an Optuna study: ask for a trial, compress and measure it, tell the result.

One objective runs TPE (Bayesian) and several NSGA-II (evolutionary), both with the budgets as
an Optuna constraint: a trial's constraint is its worst budget's overshoot, as a share of the
limit (at most 0 when every budget is met), so the samplers learn where the feasible region lies. The study lives in an Optuna
storage: a SQLite file in the output folder by default (stop it and ``--resume``), or any URL
Optuna takes. The time budget is held to the clock: no trial starts when the typical trial
would not finish in the time left.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgetune.artifacts import output_folder, partial_folder
from edgetune.errors import InputError
from edgetune.interrupt import CtrlC
from edgetune.progress import Progress, silent
from edgetune.recipe import Recipe
from edgetune.search.config import SearchConfig
from edgetune.search.pruning import CurveReporter, TrialStopped, make_pruner
from edgetune.search.space import apply, grid
from edgetune.search.trial import Outcome, run_trial

DATABASE = "search.db"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("edgetune search needs Optuna", "pip install 'edgetune[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def masked(url: str) -> str:
    """A storage URL with its password hidden."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def storage_url(config: SearchConfig, out: Path) -> str:
    return config.storage or f"sqlite:///{out / DATABASE}"


def _sampler(optuna: Any, config: SearchConfig, trials_so_far: int = 0) -> Any:
    """TPE for one objective, NSGA-II for several. Both keep their history in the storage, so
    the sampler is made anew for every trial, seeded by the seed and the trial count: a resumed
    study asks what an unbroken one would have."""
    seed = config.seed * 1_000_003 + trials_so_far
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":  # the grid's points in a seeded order, none twice (the storage tells which ran)

        class Grid(optuna.samplers.GridSampler):  # type: ignore[misc]
            def after_trial(self, *args: Any) -> None:
                """Optuna's grid stops the study from inside optimize(); here the trial count
                (the grid's size) ends the search."""

        return Grid(grid(config.space), seed=config.seed)  # one order for the whole study: trial N runs point N
    if config.sampler == "tpe" or (config.sampler == "auto" and len(config.objectives) == 1):
        startup = max(3, min(10, (config.trials or 30) // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    population = max(4, min(20, (config.trials or 30) // 3))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def fingerprint(config: SearchConfig, recipe: Recipe) -> dict[str, Any]:
    """What a study is about: a study is resumed only with the same."""
    document = {
        "space": [dimension.to_dict() for dimension in config.space],
        "objectives": list(config.objectives),
        "metric": config.metric,
        "artifact": config.artifact,
        "target": config.budget.name,
        "budgets": config.budget.budgets,
        "recipe": recipe.to_toml(),
    }
    parsed: dict[str, Any] = json.loads(json.dumps(document))
    return parsed


def _storage(optuna: Any, config: SearchConfig, url: str) -> Any:
    """The default SQLite file as a plain URL (one worker); a given storage with heartbeats, so
    that the trial of a worker that died is failed after a grace period and run again."""
    if config.storage is None:
        return url
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    beat = max(1, int(config.heartbeat))
    return optuna.storages.RDBStorage(url, heartbeat_interval=beat, grace_period=3 * beat, heartbeat_stale_trial_callback=retry)


def _create(optuna: Any, config: SearchConfig, url: str) -> Any:
    storage = _storage(optuna, config, url)
    if config.storage is not None and not config.resume and config.study in optuna.study.get_all_study_names(storage):
        raise InputError(f"study {config.study} exists in {masked(url)}", "pass --worker to join it, or name a new one with --study")
    sampler = _sampler(optuna, config)
    pruner = make_pruner(optuna, config.pruner)
    return optuna.create_study(
        storage=storage, study_name=config.study, directions=config.directions(), sampler=sampler, pruner=pruner, load_if_exists=True
    )


def open_study(optuna: Any, config: SearchConfig, recipe: Recipe, out: Path) -> Any:
    url = storage_url(config, out)
    if config.storage is None and (out / DATABASE).exists() and not config.resume:
        raise InputError(f"{out} holds a search already ({DATABASE})", "pass --resume to continue it, or give another -o")
    study = None
    for attempt in range(5):
        try:
            study = _create(optuna, config, url)
            break
        except InputError:
            raise
        except Exception as exc:  # a server that is down, a bad URL, a password refused, a damaged file
            if "IntegrityError" in type(exc).__name__ and attempt < 4:  # workers starting together race to make the tables
                time.sleep(0.5 + attempt)
                continue
            text = masked(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise InputError(
                f"cannot open the search storage {masked(url)} ({text[:160]})", "check the URL, the server and the password"
            ) from None
    assert study is not None
    wanted = fingerprint(config, recipe)
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", wanted)
    elif stored != wanted:
        changed = sorted(key for key in wanted if stored.get(key) != wanted[key])
        raise InputError(
            f"study {config.study} in {masked(url)} was made with another {', '.join(changed)}",
            "resume it with the same recipe and [search] settings, or name a new study with --study",
        )
    return study


def _requeue_stale(optuna: Any, study: Any) -> int:
    """Trials a stopped run left running (this storage has one worker): failed, and their
    parameters queued again so the study loses none."""
    stale = [trial for trial in study.get_trials(deepcopy=False) if trial.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
    return len(stale)


def finished(optuna: Any, study: Any) -> list[Any]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    return [trial for trial in study.get_trials(deepcopy=False, states=states) if "outcome" in trial.user_attrs]


def _values(config: SearchConfig, outcome: Outcome) -> list[float] | None:
    figures = {"quality": outcome.quality, "latency": outcome.latency_ms, "size": outcome.size_kb}
    values = [figures[name] for name in config.objectives]
    return None if any(value is None for value in values) else [float(value) for value in values if value is not None]


def _tell(optuna: Any, study: Any, trial: Any, config: SearchConfig, outcome: Outcome) -> None:
    values = _values(config, outcome) if outcome.failure is None else None
    if values is None and outcome.failure is None:
        outcome.failure = f"the report has no {config.metric} figure for {config.artifact}"
    trial.set_constraint("budgets", max(outcome.violations, default=0.0))  # <= 0: every budget met
    trial.set_user_attr("outcome", outcome.to_dict())
    trial.set_user_attr("violations", outcome.violations)
    if outcome.stopped:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif values is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, values)


class OutOfTime(BaseException):
    """The search's time budget ran out inside a trial (a BaseException: no handler for
    Exception in the pipeline may swallow it)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`OutOfTime` in this (main) thread when ``seconds`` have passed: a trial
    cannot carry a search past its time budget. The pipeline publishes its folder in one step,
    so a trial stopped midway leaves none."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _should_stop(config: SearchConfig, done: int, started: float, durations: list[float]) -> str | None:
    if config.trials is not None and done >= config.trials and config.storage is None:
        return "trials"
    if config.seconds is None:
        return None
    left = config.seconds - (time.monotonic() - started)
    typical = statistics.median(durations) if durations else 0.0
    return "time" if left <= 0 or typical > left else None


def _shared_turn(optuna: Any, study: Any, config: SearchConfig, done: int) -> str:
    """On a storage that other workers share: "ask" for a trial, "wait" while the trials that
    others run would fill the count (one whose worker died fails after the grace period and
    comes back waiting, to be run by whoever asks next), or "trials" when all have finished."""
    try:
        optuna.storages.fail_stale_trials(study)
    except optuna.exceptions.StorageInternalError:
        pass  # two workers failing one stale trial at once: the other one did
    states = optuna.trial.TrialState
    if study.get_trials(deepcopy=False, states=(states.WAITING,)):
        return "ask"
    running = len(study.get_trials(deepcopy=False, states=(states.RUNNING,)))
    if config.trials is None or done + running < config.trials:
        return "ask"
    return "wait" if running else "trials"


def _claim(optuna: Any, study: Any, config: SearchConfig) -> tuple[str, Any]:
    """The next turn (see :func:`_shared_turn`) and, on "ask", the trial asked for. Workers
    sharing a study look and ask under one lock: otherwise two could both see the last trial
    missing and both start it (a seventh trial of six)."""
    with _workers_lock(study, config):
        turn = "ask" if config.storage is None else _shared_turn(optuna, study, config, len(finished(optuna, study)))
        if turn != "ask":
            return turn, None
        study.sampler = _sampler(optuna, config, len(study.get_trials(deepcopy=False)))
        return turn, study.ask()


@contextmanager
def _workers_lock(study: Any, config: SearchConfig) -> Iterator[None]:
    """A PostgreSQL advisory lock named after the study, held on a connection of its own; the
    server lets go of it should the worker die. Other databases get no lock: there, workers that
    ask at the same moment can run a trial or two beyond the count."""
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    engine = getattr(backend, "engine", None)
    if config.storage is None or engine is None or engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(f"edgetune-search:{study.study_name}".encode()).digest()[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


@contextmanager
def heartbeat(study: Any, trial: Any, config: SearchConfig) -> Iterator[None]:
    """Record the trial's heartbeat while it runs, on a storage shared by workers."""
    storage = study._storage  # Optuna's ask-and-tell leaves heartbeats to the caller
    if config.storage is None or not hasattr(storage, "record_heartbeat"):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(max(1.0, config.heartbeat)):
            storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name="edgetune-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _one_trial(trial: Any, recipe: Recipe, config: SearchConfig, out: Path, started: float) -> tuple[Outcome, str | None]:
    """The asked trial's recipe compressed and measured; "time" when the budget ran out in it."""
    begun = time.monotonic()
    params = {dimension.key: dimension.suggest(trial) for dimension in config.space}
    outcome = Outcome(trial.number, params, str(out / "trials" / f"{trial.number:04d}"))
    earlier = _same_keys(trial, params)
    if earlier is not None:
        return earlier, None
    try:
        trial_recipe = apply(recipe, params, f"search trial {trial.number}")
    except InputError as exc:
        outcome.failure = exc.one_line().removeprefix("error: ")
        return outcome, None
    left = None if config.seconds is None else config.seconds - (time.monotonic() - started)
    reporter = CurveReporter(trial, trial.study.pruner) if config.pruner != "none" else silent
    with deadline(left):
        try:
            run_trial(trial_recipe, outcome, config.budget, config.metric, config.artifact, reporter)
        except OutOfTime:
            outcome.failure = "stopped at the search's time budget"
            return outcome, "time"
        except TrialStopped as stop:
            outcome.failure, outcome.stopped = stop.reason, True
        finally:
            outcome.seconds = max(outcome.seconds, time.monotonic() - begun)
            shutil.rmtree(partial_folder(Path(outcome.folder)), ignore_errors=True)  # a stopped fine-tune's checkpoint
    return outcome, None


def _same_keys(trial: Any, params: dict[str, Any]) -> Outcome | None:
    """The outcome of an earlier finished trial with the same keys (a sampler may ask for a
    point again, NSGA-II often does), reused instead of compressing the same recipe twice."""
    for other in trial.study.get_trials(deepcopy=False):
        record = other.user_attrs.get("outcome")
        if other.number != trial.number and record and record["params"] == params and not record.get("stopped_early"):
            if record["failure"] == "stopped at the search's time budget" or record.get("repeat_of") is not None:
                continue
            fallback = [0.0 if check["passed"] else 1.0 for check in record["checks"]]  # a study from before violations were kept
            return Outcome(
                trial.number,
                params,
                record["folder"],
                quality=record["quality"],
                latency_ms=record["latency_ms"],
                size_kb=record["size_kb"],
                size_kind=record.get("size_kind", "file"),
                latency_kind=record["latency_kind"],
                checks=record["checks"],
                violations=list(other.user_attrs.get("violations", fallback)),
                failure=record["failure"],
                repeat_of=other.number,
            )
    return None


def search_loop(recipe: Recipe, config: SearchConfig, out_dir: str | Path, progress: Progress = silent) -> dict[str, Any]:
    """Run trials until the trial count or the time budget is spent; the search's summary (see
    :func:`edgetune.search.results.summarize`), with its files written into ``out_dir``."""
    from edgetune.search.results import summarize, write_results

    optuna = _optuna()
    out = output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(optuna, config, recipe, out)
    requeued = _requeue_stale(optuna, study) if config.storage is None else 0
    started = time.monotonic()
    durations = [
        float(t.user_attrs["outcome"]["seconds"]) for t in finished(optuna, study) if t.user_attrs["outcome"].get("repeat_of") is None
    ]
    stopped, trial, ctrl_c = None, None, CtrlC()
    try:
        with ctrl_c:
            while (stopped := _should_stop(config, len(finished(optuna, study)), started, durations)) is None:
                turn, trial = _claim(optuna, study, config)
                if turn == "trials":
                    stopped = turn
                    break
                if turn == "wait":
                    time.sleep(max(0.5, config.heartbeat / 2))
                    continue
                with heartbeat(study, trial, config):  # from the first moment: a worker that dies now loses nothing
                    outcome, stopped = _one_trial(trial, recipe, config, out, started)
                    _tell(optuna, study, trial, config, outcome)
                trial = None
                durations += [] if outcome.repeat_of is not None else [outcome.seconds]
                done = finished(optuna, study)
                line = _line(outcome, config, started) + _best_so_far([t.user_attrs["outcome"] for t in done], config)
                progress(len(done), config.trials or 0, line)
                ctrl_c.check()  # a Ctrl-C whose exception a finalizer swallowed
                if stopped is not None:
                    break
    except KeyboardInterrupt:
        if trial is not None:  # not counted: its keys are queued, and --resume runs it first
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})
        write_results(out, summarize(config, recipe, [t.user_attrs["outcome"] for t in finished(optuna, study)], "interrupted"))
        raise
    summary = summarize(config, recipe, [t.user_attrs["outcome"] for t in finished(optuna, study)], stopped)
    summary["storage"] = masked(storage_url(config, out))
    summary["time"] = {"budget_s": config.seconds, "elapsed_s": round(time.monotonic() - started, 1)}
    summary["time"]["typical_trial_s"] = round(statistics.median(durations), 2) if durations else None
    summary["requeued"] = requeued
    write_results(out, summary)
    return summary


FIGURES = {"quality": ("quality", 1.0), "latency": ("latency_ms", -1.0), "size": ("size_kb", -1.0)}  # record key, sign of better


def _best_so_far(records: list[dict[str, Any]], config: SearchConfig) -> str:
    """The best trial on the first objective among those that meet every budget, for the progress line."""
    key, sign = FIGURES[config.objectives[0]]
    met = [r for r in records if r.get("feasible") and r.get(key) is not None and not r.get("stopped_early")]
    if not met:
        return "; none meets the budgets yet"
    best = max(met, key=lambda r: sign * r[key])
    shown = f"{config.metric} {best[key]:.4g}" if key == "quality" else f"{best[key]:.4g} {'ms' if key == 'latency_ms' else 'KB'}"
    return f"; best so far trial {best['number']} ({shown})"


def _line(outcome: Outcome, config: SearchConfig, started: float) -> str:
    if outcome.repeat_of is not None:
        what = f"the keys of trial {outcome.repeat_of} again: its figures, not compressed twice"
    elif outcome.stopped:
        what = (outcome.failure or "")[:110]
    elif outcome.failure:
        what = f"failed: {outcome.failure[:80]}"
    else:
        quality = f"{config.metric} {outcome.quality:.4g}" if outcome.quality is not None else "no quality"
        latency = f"{outcome.latency_ms:.3g} ms" if outcome.latency_ms is not None else "no latency"
        what = f"{quality}, {latency}, {'meets' if outcome.feasible else 'misses'} the budgets"
    left = "" if config.seconds is None else f"; {max(0.0, config.seconds - (time.monotonic() - started)):.0f} s left"
    return f"trial {outcome.number}: {what}{left}"
