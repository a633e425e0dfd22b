"""The profiler against its own reach, on EfficientNet-Lite0 (224x224, int8):

1. repeatability: the same artifact benchmarked again and again (interleaved ONNX and
   TFLite), the spread of the medians;
2. memory: edgetune's peak-RSS figure (peak after loading and running, minus peak after
   importing the runtime) against /usr/bin/time -v maximum RSS of two processes, one that
   loads and runs the model and one that only imports the runtime;
3. the roofline estimator against measurements of every zoo model on this host
   (``edgetune targets calibrate host``; its figures are micro-benchmarks, never fitted);
4. the unaccelerated runtime: the same int8 TFLite on tflite-runtime 2.14 (the Raspberry Pi
   environment, .venv-tflite214) against ai-edge-litert.

    python bench/profiler.py [--repeats 5]

(Not profile.py: run as a script, that name would shadow the standard library's profile module.)

Prints a table per part and writes bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

from edgetune import zoo  # noqa: E402
from edgetune.data import Dataset  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.profile.measure import AGENT, Settings, bench_document, run_local  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = {
    ".onnx": "import numpy, onnxruntime",
    ".tflite": "import numpy\nfrom ai_edge_litert.interpreter import Interpreter",
}


def _max_rss_kib(argv: list[str]) -> int:
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, check=True)
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]


def repeatability(paths: list[Path], repeats: int) -> list[dict[str, Any]]:
    medians: dict[str, list[float]] = {p.name: [] for p in paths}
    for index in range(repeats):
        for path in paths if index % 2 == 0 else reversed(paths):
            log(f"[repeat {index + 1}/{repeats}] {path.name}")
            raw = run_local(path, Settings(threads=2, runs=100, warmup=20, min_seconds=1.0))
            medians[path.name].append(float(np.median(raw["times_ms"])))
    return [
        {
            "artifact": name,
            "medians_ms": values,
            "spread": max(values) / min(values) - 1.0,
            "within_5pct": max(values) / min(values) - 1.0 <= 0.05,
        }
        for name, values in medians.items()
    ]


def memory(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        ours = bench_document(run_local(path, Settings(threads=2, runs=20)), path, "host", "this host")["memory"]["peak_rss_delta_bytes"]
        with_model = [_max_rss_kib([sys.executable, str(AGENT), str(path), "--threads", "2", "--runs", "20"]) for _ in range(2)]
        without = [_max_rss_kib([sys.executable, "-c", IMPORTS[path.suffix]]) for _ in range(2)]
        reference = (float(np.median(with_model)) - float(np.median(without))) * 1024
        rows.append({"artifact": path.name, "edgetune_bytes": ours, "time_v_bytes": reference, "ratio": ours / reference})
    return rows


def unaccelerated(tflite: Path) -> dict[str, Any] | None:
    pi_python = ROOT / ".venv-tflite214" / "bin" / "python"
    if not pi_python.is_file():
        return None
    figures = {}
    for name, python in (("ai-edge-litert", sys.executable), ("tflite-runtime 2.14", str(pi_python))):
        raw = run_local(tflite, Settings(threads=2, runs=20, warmup=3), python=python)
        figures[name] = {
            "p50_ms": float(np.median(raw["times_ms"])),
            "delegated": raw["delegation"]["delegated"],
            "ops": raw["delegation"]["ops"],
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("EDGETUNE_HOME", tempfile.mkdtemp())  # the calibrated host profile goes to a scratch folder
    with tempfile.TemporaryDirectory() as tmp:
        log("compressing EfficientNet-Lite0 (random calibration data: latency and memory only)")
        data = Dataset(np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32), None, "random")
        compress(zoo.efficientnet_lite0(), data, tmp)
        paths = [Path(tmp) / "model.onnx", Path(tmp) / "model.tflite"]
        repeat_rows = repeatability(paths, args.repeats)
        memory_rows = memory(paths)
        slow = unaccelerated(paths[1])
    from edgetune.cli.targets import zoo_artifacts
    from edgetune.profile.calibrate import calibrate_host

    log("edgetune targets calibrate host (micro-benchmarks, then every zoo model measured and estimated)")
    _, calibration = calibrate_host(zoo_artifacts)

    print(
        table(
            [
                [
                    r["artifact"],
                    " ".join(f"{m:.3f}" for m in r["medians_ms"]),
                    f"{100 * r['spread']:.1f}%",
                    "yes" if r["within_5pct"] else "NO",
                ]
                for r in repeat_rows
            ],
            ["artifact", "medians (ms)", "spread", "<= 5%"],
        )
    )
    print()
    print(
        table(
            [
                [r["artifact"], f"{r['edgetune_bytes'] / 2**20:.1f}", f"{r['time_v_bytes'] / 2**20:.1f}", f"{r['ratio']:.3f}"]
                for r in memory_rows
            ],
            ["artifact", "edgetune peak RSS delta (MiB)", "/usr/bin/time -v delta (MiB)", "ratio"],
        )
    )
    print()
    rows = [
        [
            model,
            artifact,
            f"{row['measured_ms']:.3f}",
            f"{row['estimated_ms']:.3f}",
            f"{row['ratio']:.2f}",
            "yes" if 0.5 <= row["ratio"] <= 2.0 else "NO",
        ]
        for model, artifacts in calibration["models"].items()
        for artifact, row in artifacts.items()
    ]
    print(table(rows, ["model", "artifact", "measured ms", "estimated ms", "estimate/measured", "within 2x"]))
    print("host peaks: " + ", ".join(f"{k} {v}" for k, v in calibration["peak"].items()))
    if slow:
        print()
        print(
            table(
                [[name, f"{f['p50_ms']:.2f}", f"{f['delegated']}/{f['ops']}"] for name, f in slow.items()],
                ["runtime (EfficientNet-Lite0 int8 TFLite)", "p50 ms", "ops delegated"],
            )
        )
    document = {
        "benchmark": "profile",
        "repeatability": repeat_rows,
        "memory": memory_rows,
        "estimator": calibration,
        "unaccelerated": slow,
    }
    print(f"wrote {write_json('profile', document)}")


if __name__ == "__main__":
    main()
