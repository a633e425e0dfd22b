"""``edgetune bench``: latency and memory of an artifact, measured here or on a board, or estimated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import FiniteFloat, common_options, emit, table


@click.command("bench")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", default="host", show_default=True, help="Target profile: threads, affinity, peak figures, SRAM and flash.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="ssh://user@host[:port]|adb:SERIAL|qemu:TARGET",
    help="Measure on a board (repeatable: boards run in parallel). Without it, a non-host target is estimated."
    " qemu:TARGET checks results on an emulated board (no latency).",
)
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads; overrides the target profile.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Timed runs (at least).")
@click.option("--min-seconds", type=FiniteFloat(min=0), default=0.0, show_default=True, help="Keep timing until this much time has passed.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs first.")
@click.option("--op-profile", is_flag=True, help="Time per op (ONNX Runtime's profiler; benchmark_model's over adb).")
@click.option("--timeout", "timeout_s", type=FiniteFloat(min=1), default=600.0, show_default=True, help="Seconds before a run is stopped.")
@click.option(
    "--memory-cap",
    "memory_cap_mb",
    type=FiniteFloat(min=1),
    default=4096.0,
    show_default=True,
    help="MiB of RSS before a local run is stopped.",
)
@click.option(
    "--samples", type=click.IntRange(min=1), default=16, show_default=True, help="Seeded random inputs checked on a qemu: device."
)
@click.option("--ssh-config", type=click.Path(dir_okay=False, path_type=Path), help="An ssh config file instead of ~/.ssh/config.")
@click.option(
    "--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), help="Write PNG plots (latency distribution, per-op time) here."
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def command(
    artifact: Path,
    target: str,
    devices: tuple[str, ...],
    threads: int | None,
    runs: int,
    min_seconds: float,
    warmup: int,
    op_profile: bool,
    timeout_s: float,
    memory_cap_mb: float,
    samples: int,
    ssh_config: Path | None,
    plot_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Measure latency (p50/p90/p99, confidence interval of the median) and memory of ARTIFACT
    on this host or on boards, or estimate them for a target that is not attached."""
    from edgetune.api import benchmark

    documents = benchmark(
        artifact,
        target=target,
        devices=devices,
        threads=threads,
        runs=runs,
        warmup=warmup,
        min_seconds=min_seconds,
        op_profile=op_profile,
        timeout_s=timeout_s,
        memory_cap_mb=memory_cap_mb,
        ssh_config=ssh_config,
        samples=samples,
    )
    if plot_dir is not None:
        from edgetune.profile.plots import write_plots

        for document in documents:
            document["plots"] = [str(p) for p in write_plots(document, plot_dir)]
    if len(documents) == 1:
        emit(documents[0], as_json, _human)
    else:
        emit(
            {"schema": "edgetune.bench", "version": 2, "results": documents},
            as_json,
            lambda d: "\n\n".join(_human(r) for r in d["results"]),
        )


def _human(doc: dict[str, Any]) -> str:
    rows = [("artifact", f"{doc['artifact']} ({doc['artifact_bytes'] / 1024:.1f} KiB)")]
    if doc["kind"] == "estimated":
        rows += _estimated_rows(doc)
    elif doc["kind"] == "emulated":
        rows += parity_rows(doc)
    else:
        rows += _measured_rows(doc)
    if "memory_plan" in doc:
        rows.append(("memory plan", _memory_plan_text(doc["memory_plan"], doc["target"])))
    for warning in doc.get("warnings", []):
        rows.append(("warning", warning))
    if doc.get("note"):
        rows.append(("note", doc["note"]))
    return table(rows)


def _memory_plan_text(plan: dict[str, Any], target: str) -> str:
    """A microcontroller's SRAM and flash, in KiB; a board's RAM and storage, in its own units;
    no capacity where the profile gives none (the host)."""
    biggest = ", ".join(f"{t['tensor']} {t['bytes'] / 1024:.1f} KiB" for t in plan["largest_tensors"])
    mcu = plan.get("device_class") == "mcu"
    sizes = f"arena {plan['arena_bytes'] / 1024:.1f} KiB (no reuse: {plan['arena_without_reuse_bytes'] / 1024:.1f} KiB)"
    sizes += f", {'flash' if mcu else 'file'} {plan['flash_bytes'] / 1024:.1f} KiB"
    if plan["fits"] is None:
        return f"{sizes}; largest: {biggest}"
    verdict = "fits" if plan["fits"] else "does NOT fit"
    if mcu:
        capacity = f"{plan['sram_bytes'] / 1024:.0f} KiB SRAM, {plan['flash_capacity_bytes'] / 1024:.0f} KiB flash"
    else:
        capacity = f"{_capacity(plan['sram_bytes'])} RAM, {_capacity(plan['flash_capacity_bytes'])} storage"
    return f"{sizes}: {verdict} in {target} ({capacity}); largest: {biggest}"


def _capacity(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def parity_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of a parity document (edgetune.parity): one per kernel path."""
    rows = [
        ("checked on", f"{doc['device']} ({doc['core']}, {doc['runtime']['board']}) against this host ({doc['runtime']['host']})"),
        ("inputs", f"{doc['samples']} samples: {doc['data']}"),
    ]
    for name, path in doc["paths"].items():
        lsb = f"max {path['max_lsb']} LSB" if path["max_lsb"] is not None else f"max |diff| {path['max_abs_diff']:.3g}"
        agreement = (
            f", top-1 agreement {100 * path['top1_agreement']:.2f}% ({path['changed_predictions']} changed)"
            if "top1_agreement" in path
            else ""
        )
        rows.append((name, f"{lsb}, {100 * path['differing_share']:.2f}% of elements differ{agreement}"))
    return rows


def _measured_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    p50 = (
        f"p50 {doc['p50_ms']:.3f} ms, p90 {doc['p90_ms']:.3f} ms, p99 {doc['p99_ms']:.3f} ms"
        if doc["p50_ms"] is not None
        else "no percentiles"
    )
    ci = doc.get("median_ci95_ms")
    rows = [
        ("measured on", f"{doc['device']} with {doc['runtime']}, {doc['threads']} thread(s), target profile {doc['target']}"),
        (
            "latency",
            f"{p50} (mean {doc['mean_ms']:.3f} +- {doc['std_ms']:.3f})" + (f"; median 95% CI {ci[0]:.3f}-{ci[1]:.3f} ms" if ci else ""),
        ),
        (
            "runs",
            f"{doc['runs']} timed after {doc['warmup']} warm-up; first inference {doc['first_inference_ms']:.2f} ms, load {doc['load_ms']:.1f} ms",
        ),
    ]
    delta = doc["memory"]["peak_rss_delta_bytes"]
    rows.append(("memory", f"peak RSS +{delta / 2**20:.1f} MiB for loading and running the model" if delta is not None else "not measured"))
    delegation = doc.get("delegation")
    if delegation:
        rows.append(("XNNPACK", f"{delegation['delegated']} of {delegation['ops']} ops delegated"))
    ops = doc.get("ops") or {}
    if ops.get("ms_by_op_type"):
        top = list(ops["ms_by_op_type"].items())[:5]
        rows.append(("time per op type", ", ".join(f"{k} {v:.3f} ms" for k, v in top)))
        if ops.get("statistic"):
            rows.append(("", ops["statistic"]))
    return rows


def _estimated_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    estimate = doc["estimate"]
    rows = [
        ("ESTIMATED", f"p50 ~{estimate['p50_ms']:.3f} ms on {doc['target']} with {estimate['threads']} thread(s) (not measured)"),
        ("model", estimate["model"]),
    ]
    bar = doc.get("error_bar")
    if bar:
        low, high = bar["estimate_over_measured"]
        rows.append(
            ("error bar", f"on this host the same estimator gave {low:.2f}x-{high:.2f}x of measured latency ({', '.join(bar['models'])})")
        )
    else:
        rows.append(("error bar", "unknown: run 'edgetune targets calibrate host' to check the estimator against this host"))
    return rows
