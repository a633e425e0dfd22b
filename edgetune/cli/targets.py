"""``edgetune targets list|show``: the hardware target profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.group("targets")
def group() -> None:
    """Hardware target profiles (targets/*.toml)."""


@group.command("list")
@common_options
def list_targets(as_json: bool) -> None:
    """List the known targets."""
    from edgetune.targets import all_targets

    doc = {"targets": [t.to_dict() for t in all_targets()]}
    emit(doc, as_json, _human_list)


@group.command("show")
@click.argument("name")
@common_options
def show(name: str, as_json: bool) -> None:
    """Show one target profile."""
    from edgetune.targets import load_target

    emit(load_target(name).to_dict(), as_json, _human_show)


@group.command("calibrate")
@click.argument("name", type=click.Choice(["host"]))
@click.option(
    "--check",
    default="digits_cnn,resnet8,ds_cnn,mobilenet_v2,efficientnet_lite0",
    show_default=True,
    help="Zoo models to measure and estimate, for the estimator's error bar ('' for none).",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def calibrate(name: str, check: str, quiet: bool, as_json: bool) -> None:
    """Measure this host's peak figures (micro-benchmarks) and check the latency estimator
    against measured zoo models; writes the host profile to the user's targets folder."""
    from edgetune.profile.calibrate import calibrate_host
    from edgetune.progress import StderrProgress

    models = tuple(m.strip() for m in check.split(",") if m.strip())
    path, result = calibrate_host(zoo_artifacts, models, StderrProgress(not quiet))
    emit({"written": str(path), **result}, as_json, _human_calibration)


def zoo_artifacts(name: str, target: Any, folder: Path) -> None:
    """A zoo model compressed for ``target`` on random calibration data (its latency, not its
    accuracy, is what the host calibration measures)."""
    import numpy as np

    from edgetune import zoo
    from edgetune.data import Dataset
    from edgetune.pipeline import compress

    model = getattr(zoo, name)()
    shape = getattr(model, "input_shape", None) or (3, 224, 224)
    data = Dataset(np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32), None, "random")
    compress(model, data, folder, target=target)


def _human_calibration(doc: dict[str, Any]) -> str:
    rows = [(f"peak.{key}", str(value)) for key, value in doc["peak"].items()]
    for model, artifacts in doc["models"].items():
        for artifact, row in artifacts.items():
            rows.append(
                (
                    f"{model}/{artifact}",
                    f"measured {row['measured_ms']:.3f} ms, estimated {row['estimated_ms']:.3f} ms ({row['ratio']:.2f}x)",
                )
            )
    check = doc["estimator_check"]
    if check:
        rows.append(("error bar", f"estimates are {check['min_ratio']:.2f}x-{check['max_ratio']:.2f}x of measured latency"))
    return table(rows) + f"\nwrote {doc['written']}"


def _human_list(doc: dict[str, Any]) -> str:
    rows = [
        (t["name"], t["class"], str(t["cores"] or "auto"), f"{t['peak']['int8_gmacs']:g}", t["runtime"], t["description"])
        for t in doc["targets"]
    ]
    return table(rows, ("name", "class", "cores", "int8 GMAC/s", "runtime", "description"))


def _human_show(doc: dict[str, Any]) -> str:
    rows = [(key, str(value)) for key, value in doc.items() if key not in ("peak", "budgets")]
    rows += [(f"peak.{key}", str(value)) for key, value in doc["peak"].items()]
    rows += [(f"budgets.{key}", str(value)) for key, value in doc["budgets"].items()]
    return table(rows)
