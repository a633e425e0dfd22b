"""``edgetune bench``: latency and memory of an artifact on this host."""

from __future__ import annotations

from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.command("bench")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--target", default="host", show_default=True, help="Target profile whose thread count is used.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads; overrides the target profile.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs first.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def command(artifact: str, target: str, threads: int | None, runs: int, warmup: int, quiet: bool, as_json: bool, debug: bool) -> None:
    """Measure single-sample latency (p50/p90/p99) and memory of ARTIFACT on this host."""
    from edgetune.api import benchmark
    from edgetune.progress import StderrProgress

    emit(benchmark(artifact, target=target, threads=threads, runs=runs, warmup=warmup, progress=StderrProgress(not quiet)), as_json, _human)


def _human(doc: dict[str, Any]) -> str:
    rows = [
        ("artifact", f"{doc['artifact']} ({doc['artifact_bytes'] / 1024:.1f} KiB)"),
        ("measured on", f"{doc['measured_on']} with {doc['runtime']}, {doc['threads']} thread(s), target profile {doc['target']}"),
        (
            "latency",
            f"p50 {doc['p50_ms']:.3f} ms, p90 {doc['p90_ms']:.3f} ms, p99 {doc['p99_ms']:.3f} ms (mean {doc['mean_ms']:.3f} +- {doc['std_ms']:.3f})",
        ),
        (
            "runs",
            f"{doc['runs']} timed after {doc['warmup']} warm-up; first inference {doc['first_inference_ms']:.2f} ms, load {doc['load_ms']:.1f} ms",
        ),
        ("memory", f"RSS +{doc['rss_delta_mb']:.1f} MiB for the session, process peak {doc['peak_rss_mb']:.1f} MiB"),
    ]
    if doc.get("note"):
        rows.append(("note", doc["note"]))
    return table(rows)
