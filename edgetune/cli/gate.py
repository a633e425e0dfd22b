"""``edgetune gate``: pass or fail a release against its budgets and a baseline (exit 0 or 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table

EXIT_FAILED = 1


@click.command("gate")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="edgetune.toml or pyproject.toml ([tool.edgetune])."
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use this compress report.json (and the artifacts beside it) instead of running the recipe.",
)
@click.option(
    "--measurements",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Use recorded measurements (a gate --json document or a baseline) instead of measuring.",
)
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), help="Compare with this baseline (JSON).")
@click.option("--update-baseline", is_flag=True, help="Write this run's figures to --baseline instead of comparing.")
@click.option(
    "--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here (one test case per budget per target)."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a Markdown summary here ($GITHUB_STEP_SUMMARY gets it anyway).",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def command(
    config_path: Path | None,
    report: Path | None,
    measurements: Path | None,
    baseline: Path | None,
    update_baseline: bool,
    junit: Path | None,
    markdown_path: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Check a release against per-target budgets and a baseline: exit 0 pass, 1 a budget failed,
    2 a usage or input error.

    Budgets (per [targets.NAME] table): min_accuracy, max_accuracy_drop_pp, min_sqnr_db,
    min_tflite_onnx_agreement, all_ops_delegated, max_latency_p50_ms, max_latency_p90_ms,
    max_peak_memory_mb, max_artifact_kb, max_arena_kb, max_flash_kb, and on an emulated board
    (device = "qemu:raspberry-pi-4") max_parity_lsb and min_parity_agreement. A latency regression
    against the baseline compares each repetition's 10th-percentile time (regression_quantile);
    it must be significant (Mann-Whitney U, p < alpha) and larger than max(min_slowdown,
    3 x the measured CV).
    """
    from edgetune.errors import InputError
    from edgetune.gate import gate, load_config
    from edgetune.gate.outputs import write_outputs
    from edgetune.progress import StderrProgress

    if update_baseline and baseline is None:
        raise InputError("--update-baseline needs --baseline FILE", "say where to write the baseline")
    config = load_config(config_path)
    document, checks = gate(
        config,
        report=report,
        measurements=measurements,
        baseline=baseline,
        update_baseline=update_baseline,
        progress=StderrProgress(not quiet),
    )
    document["outputs"] = write_outputs(document, checks, junit, markdown_path)
    emit(document, as_json, _human)
    if not document["passed"]:
        raise click.exceptions.Exit(EXIT_FAILED)


def _human(document: dict[str, Any]) -> str:
    from edgetune.gate.outputs import HEADER, rows
    from edgetune.gate.run import Check

    checks = [Check(**c) for c in document["checks"]]
    text = table(rows(checks), HEADER)
    for note in document["notes"]:
        text += f"\nnote: {note}"
    for check in checks:
        if check.detail and (check.name == "latency_regression" or not check.passed):
            text += f"\n{check.target} {check.label}: {check.detail}"
    if document.get("baseline_written"):
        text += f"\nwrote baseline {document['baseline_written']}"
    if document.get("baseline_not_written"):
        text += f"\nbaseline not written: {document['baseline_not_written']}"
    verdict = "PASSED" if document["passed"] else f"FAILED: {', '.join(document['failed'])}"
    return text + f"\ngate {verdict}"
