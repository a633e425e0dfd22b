"""``edgetune search``: the recipe that meets a target's budgets best, found by Optuna."""

from __future__ import annotations

import sys
from typing import Any

import click

from edgetune.cli.output import common_options, emit, fmt, pairs, table
from edgetune.errors import EdgetuneError

EXIT_NOT_MET = 1


class Interrupted(EdgetuneError):
    """Ctrl-C during a search: unlike other commands, it leaves the trials it finished."""

    exit_code = 130


@click.command("search")
@click.argument("recipe_file", metavar="RECIPE")
@click.option("-o", "--out", "out_dir", required=True, help="Search folder: search.db, trials/, best/, search.json, pareto.png.")
@click.option("--trials", type=click.IntRange(min=1), help="Stop after this many trials (default 30, or none with --time).")
@click.option("--time", "time_budget", metavar="DURATION", help="Stop within this time: 90s, 20m, 2h.")
@click.option("--budget", "budgets", metavar="NAME=VALUE", multiple=True, help="A budget in the gate's words, e.g. max_latency_p50_ms=0.5.")
@click.option(
    "--space",
    "space",
    metavar="KEY=SPEC",
    multiple=True,
    help="Vary a key: 'prune.ratio=[0.0, 0.7]', 'quantize.method=[\"mse\", \"minmax\"]'.",
)
@click.option(
    "--objective", "objectives", type=click.Choice(["quality", "latency", "size"]), multiple=True, help="Repeat for a Pareto front."
)
@click.option("--metric", type=click.Choice(["accuracy", "sqnr", "agreement"]), help="What quality means (default accuracy).")
@click.option("--artifact", type=click.Choice(["model.tflite", "model.onnx"]), help="Whose figures count (default model.tflite).")
@click.option("--target", metavar="NAME", help="Hardware target profile whose latency the budgets hold (default: the recipe's).")
@click.option("--device", metavar="URL", help="Measure on this board: ssh://user@host or adb:SERIAL.")
@click.option("--seed", type=int, help="Sampler seed (default 0).")
@click.option(
    "--sampler",
    type=click.Choice(["auto", "tpe", "nsga2", "random", "grid"]),
    help="Default auto: TPE, or NSGA-II for several objectives; random and grid (5 values per range) to compare with.",
)
@click.option(
    "--pruner",
    type=click.Choice(["auto", "median", "halving", "none"]),
    help="Stop hopeless trials on the fine-tune's validation curve (auto: median with one objective and a fine-tune).",
)
@click.option("--set", "sets", metavar="KEY=VALUE", multiple=True, help="Set one recipe key over the file.")
@click.option("--storage", metavar="URL", help="An Optuna storage URL (default: sqlite in the search folder).")
@click.option("--study", metavar="NAME", help="Study name in the storage (default edgetune).")
@click.option("--resume", is_flag=True, help="Continue the study the folder (or storage) holds.")
@click.option("--worker", is_flag=True, help="Join the study on --storage as one more worker (any number may).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def command(recipe_file: str, out_dir: str, budgets: tuple[str, ...], space: tuple[str, ...], **options: Any) -> None:
    """Search recipe keys around RECIPE for the best recipe that meets the budgets: TPE for one
    objective, NSGA-II for several; exit 0 when a trial meets every budget, 1 when none did
    (the closest is still written), 2 on a usage or input error.

    RECIPE is a recipe file; its [search] table may hold the settings below ([search.budgets],
    [search.space]), which the options override. Without a space, the search varies the
    pruning ratio and criterion, the range method and the post-training techniques."""
    from edgetune.recipe import load, parse_sets
    from edgetune.search import search_table

    recipe = load(recipe_file)
    if options["target"]:
        recipe = recipe.updated({"target": options["target"]}, "--target")
    if options["sets"]:
        recipe = recipe.updated(parse_sets(options["sets"]), "--set")
    table_ = search_table(recipe_file)
    given = {
        "trials": options["trials"],
        "time": options["time_budget"],
        "objectives": list(options["objectives"]) or None,
        "metric": options["metric"],
        "artifact": options["artifact"],
        "device": options["device"],
        "seed": options["seed"],
        "sampler": options["sampler"],
        "pruner": options["pruner"],
        "study": options["study"],
        "budgets": {**table_.get("budgets", {}), **pairs(budgets, "--budget")} if budgets else None,
        "space": {**table_.get("space", {}), **pairs(space, "--space")} if space else None,
    }
    quiet = options["quiet"]

    def progress(done: int, total: int, label: str) -> None:
        if not quiet:
            print(f"search {done}/{total or '-'}: {label}", file=sys.stderr, flush=True)

    from edgetune.search.config import search_config, with_storage
    from edgetune.search.study import search_loop

    if options["worker"] and not options["storage"]:
        from edgetune.errors import InputError

        raise InputError("--worker joins a study on a shared storage", "give --storage postgresql://user@host/db (and --study NAME)")
    resume = options["resume"] or options["worker"]
    config = with_storage(search_config(recipe, table_, recipe_file, **given), options["storage"], resume)
    try:
        summary = search_loop(recipe.with_absolute_paths(), config, out_dir, progress)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the finished trials are in {out_dir}/search.json", "run the same command with --resume to go on"
        ) from None
    emit(summary, options["as_json"], _human)
    if not summary["met"]:
        raise click.exceptions.Exit(EXIT_NOT_MET)


def _human(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    early = f", {counts['stopped_early']} stopped early by the {summary['pruner']} pruner" if summary["pruner"] != "none" else ""
    lines = [
        f"search {summary['study']} on {summary['target']}: {counts['trials']} trials, {counts['feasible']} meet the budgets,"
        f" {counts['failed']} failed{early} (stopped by {summary['stopped']})"
    ]
    by_number = {trial["number"]: trial for trial in summary["trials"]}
    rows = [
        [
            trial["number"],
            fmt(trial["quality"], 4),
            fmt(trial["latency_ms"], 3),
            fmt(trial["size_kb"], 1),
            "yes" if trial["feasible"] else "no",
            ", ".join(f"{k}={v}" for k, v in trial["params"].items()),
        ]
        for trial in (by_number[number] for number in summary["front"])
    ]
    if rows:
        lines += ["front:", table(rows, ["trial", summary["metric"], "ms", "KB", "meets", "recipe keys"])]
    chosen = summary["best"] or summary["closest"]
    if summary["best"]:
        lines.append(f"best: trial {chosen['number']}, in {summary.get('best_folder', '-')}")
    elif chosen:
        lines.append(f"no trial meets the budgets; closest: trial {chosen['number']}, in {summary.get('best_folder', '-')}")
    else:
        lines.append("no trial finished")
    return "\n".join(lines)
