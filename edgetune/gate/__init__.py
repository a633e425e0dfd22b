"""Gate: a CI step that fails a release which breaks a budget or regresses against a baseline."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from edgetune.artifacts import json_bytes, publish_folder, write_file
from edgetune.errors import InputError
from edgetune.gate.config import GateConfig, load_config
from edgetune.gate.run import Check, baseline_document, evaluate_gate, measure, read_json, run_recipe
from edgetune.progress import Progress, silent

__all__ = ["Check", "GateConfig", "gate", "load_config"]


def artifacts_folder(baseline: Path) -> Path:
    """Where a baseline keeps its artifacts: ``baseline.json`` -> ``baseline.artifacts/``."""
    return baseline.with_name(baseline.stem + ".artifacts")


def baseline_artifacts(baseline: Path, document: dict[str, Any]) -> Path | None:
    """The artifacts folder a baseline document names, or the older layout's loose folder.

    ``baseline.json`` is written last and names ``baseline.artifacts/<digest>``, a folder
    complete before it: so an update that stops half-way leaves the old pair readable."""
    named = document.get("artifacts")
    top = artifacts_folder(baseline)
    if isinstance(named, str) and re.fullmatch(r"[0-9a-f]{16}", named):
        return top / named if (top / named).is_dir() else None
    if top.is_dir() and any(entry.is_file() for entry in top.iterdir()):
        return top
    return None


def write_baseline(baseline: Path, document: dict[str, Any], artifacts: dict[str, bytes]) -> None:
    """The artifacts into a folder named by their digest, then the document naming it, then the
    old artifacts removed: at every moment the document names a complete folder."""
    digest = hashlib.sha256()
    for name in sorted(artifacts):
        digest.update(name.encode() + b"\0" + hashlib.sha256(artifacts[name]).digest())
    name = digest.hexdigest()[:16]
    top = artifacts_folder(baseline)
    publish_folder(top / name, artifacts)
    write_file(baseline, json_bytes({**document, "artifacts": name}))
    for entry in top.iterdir():  # the previous set (a digest folder, or the older loose files)
        if entry.name != name:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _recorded(path: Path) -> dict[str, Any]:
    measured = read_json(path, "measurements").get("measurements")
    if not isinstance(measured, dict) or not measured:
        raise InputError(f"{path} holds no measurements", "pass a gate --json document or a baseline that edgetune wrote")
    return measured


def _read_baseline(path: Path) -> dict[str, Any]:
    document = read_json(path, "baseline")
    measured = document.get("measurements")
    if not isinstance(measured, dict) or not measured:
        raise InputError(f"baseline {path} holds no measurements", "write it with edgetune gate --update-baseline")
    return document


def gate(
    config: GateConfig,
    *,
    report: str | Path | None = None,
    measurements: str | Path | None = None,
    baseline: str | Path | None = None,
    update_baseline: bool = False,
    progress: Progress = silent,
) -> tuple[dict[str, Any], list[Check]]:
    """Decide: the gate document (``passed``, checks, measurements) and the checks.

    ``report``: an existing compress report.json (its folder holds the artifacts) instead of
    running the recipe; ``measurements``: recorded measurements (a gate document or a
    baseline) instead of measuring; ``baseline``: a baseline to compare with, written anew
    from this run with ``update_baseline``.
    """
    folder = Path(report).parent if report is not None else run_recipe(config, progress)
    report_doc = read_json(Path(report) if report is not None else folder / "report.json", "report")
    base, base_artifacts = None, None
    if baseline is not None and not update_baseline:
        base = _read_baseline(Path(baseline))
        base_artifacts = baseline_artifacts(Path(baseline), base)
    same_run: dict[str, Any] = {}
    if measurements:
        measured = _recorded(Path(measurements))
    else:
        measured, same_run = measure(config, folder, progress, base_artifacts)
    checks = evaluate_gate(config, report_doc, folder, measured, base, same_run)
    document: dict[str, Any] = {
        "schema": "edgetune.gate",
        "version": 1,
        "config": config.source,
        "passed": all(c.passed for c in checks),
        "failed": [f"{c.target}: {c.label}" for c in checks if not c.passed],
        "checks": [c.to_dict() for c in checks],
        "measurements": measured,
        "baseline_measurements": same_run,  # the baseline's artifacts, re-measured in this run
        "baseline": str(baseline) if baseline is not None else None,
        "notes": list(config.notes),
    }
    if baseline is not None and update_baseline and not document["passed"]:
        document["baseline_not_written"] = "this build fails the gate: a baseline is recorded only from a passing build"
    elif baseline is not None and update_baseline:
        path = Path(baseline)
        # The artifacts too: later gates re-measure them beside the new build, interleaved.
        kept = {name: (folder / name).read_bytes() for name in config.artifacts if (folder / name).is_file()}
        write_baseline(path, baseline_document(report_doc, measured), kept)
        document["baseline_written"] = str(path)
    return document, checks
