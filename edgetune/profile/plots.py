"""PNG plots of a bench document: the latency distribution, and time per op type.

matplotlib is an optional dependency (``pip install edgetune[plots]``); it is imported only here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.plotting import pyplot


def _stem(document: dict[str, Any]) -> str:
    where = document.get("device") or document["kind"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(document['artifact']).name}-{where}")


def write_plots(document: dict[str, Any], folder: Path) -> list[Path]:
    """Write the plots the document has data for; returns their paths."""
    plt = pyplot("--plot")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    times = document.get("times_ms")
    if times:
        written.append(_latency_plot(plt, document, times, folder / f"{_stem(document)}-latency.png"))
    by_type = (document.get("ops") or {}).get("ms_by_op_type") or (document.get("estimate") or {}).get("ms_by_op_type")
    if by_type:
        items = sorted(by_type.items(), key=lambda kv: kv[1])[-15:]
        figure, axis = plt.subplots(figsize=(6, 0.35 * len(items) + 1.2), dpi=100)
        axis.barh([k for k, _ in items], [v for _, v in items], color="#dd8452" if document["kind"] == "estimated" else "#55a868")
        axis.set_xlabel("ms per inference" + (" (ESTIMATED)" if document["kind"] == "estimated" else ""))
        axis.set_title(f"time per op type: {Path(document['artifact']).name}", fontsize=9)
        written.append(_save(plt, figure, folder / f"{_stem(document)}-ops.png"))
    return written


def latency_range(times: list[float]) -> tuple[float, float, int]:
    """The histogram's x range: from the fastest run to a little past the 99th percentile, so
    that a few slow outliers do not squeeze every other run into one bar; and how many runs
    lie beyond it (said on the plot, not drawn)."""
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    low, p99 = float(ordered[0]), float(np.quantile(ordered, 0.99))
    high = max(p99 + 0.1 * (p99 - low), low * 1.001 + 1e-6)
    return low, high, int((ordered > high).sum())


def _latency_plot(plt: Any, document: dict[str, Any], times: list[float], path: Path) -> Path:
    low, high, beyond = latency_range(times)
    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    shown = [t for t in times if t <= high]
    axis.hist(shown, bins=np.linspace(low, high, min(50, max(10, len(shown) // 5)) + 1), color="#4c72b0")
    for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", ":")):
        axis.axvline(document[key], color="black", linestyle=style, label=f"{key[:3]} {document[key]:.3g} ms")
    axis.set_xlim(low - 0.02 * (high - low), high)
    axis.set_xlabel("latency per inference (ms)")
    axis.set_ylabel("runs")
    note = f"; {beyond} slower run(s) up to {max(times):.3f} ms not drawn" if beyond else ""
    axis.set_title(
        f"{Path(document['artifact']).name} on {document['device']}, {document['threads']} thread(s): {len(times)} runs{note}", fontsize=8
    )
    axis.legend(fontsize=8)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, metadata={"Software": None})
    plt.close(figure)
    temporary.replace(path)
    return path
