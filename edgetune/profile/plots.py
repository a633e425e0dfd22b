"""PNG plots of a bench document: the latency distribution, and time per op type.

matplotlib is an optional dependency (``pip install edgetune[plots]``); it is imported only here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
        figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
        axis.hist(times, bins=min(60, max(10, len(times) // 5)), color="#4c72b0")
        for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", ":")):
            axis.axvline(document[key], color="black", linestyle=style, label=f"{key[:3]} {document[key]:.3f} ms")
        axis.set_xlabel("latency (ms)")
        axis.set_ylabel("runs")
        axis.set_title(f"{Path(document['artifact']).name} on {document['device']} ({document['threads']} thread(s))", fontsize=9)
        axis.legend(fontsize=8)
        written.append(_save(plt, figure, folder / f"{_stem(document)}-latency.png"))
    by_type = (document.get("ops") or {}).get("ms_by_op_type") or (document.get("estimate") or {}).get("ms_by_op_type")
    if by_type:
        items = sorted(by_type.items(), key=lambda kv: kv[1])[-15:]
        figure, axis = plt.subplots(figsize=(6, 0.35 * len(items) + 1.2), dpi=100)
        axis.barh([k for k, _ in items], [v for _, v in items], color="#dd8452" if document["kind"] == "estimated" else "#55a868")
        axis.set_xlabel("ms per inference" + (" (ESTIMATED)" if document["kind"] == "estimated" else ""))
        axis.set_title(f"time per op type: {Path(document['artifact']).name}", fontsize=9)
        written.append(_save(plt, figure, folder / f"{_stem(document)}-ops.png"))
    return written


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, metadata={"Software": None})
    plt.close(figure)
    temporary.replace(path)
    return path
