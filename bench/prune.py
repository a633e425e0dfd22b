"""Channel pruning at 50%: MACs, parameters and int8 latency against the unpruned model, and
digits accuracy right after pruning (no fine-tune) against Torch-Pruning, same ratio and criterion.

Torch-Pruning runs in its own environment (.venv-tp, made by `make bench`), never in edgetune's.

    python bench/prune.py [--quick]

Prints a table and writes bench/results/prune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, interleaved_latency, log, table, write_json  # noqa: E402

from edgetune import zoo  # noqa: E402
from edgetune.data import load_dataset  # noqa: E402
from edgetune.evaluate.tflite_runtime import TfliteRunner  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.prune import PruneConfig  # noqa: E402
from edgetune.quantize import QuantConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TP_VENV = Path(os.environ.get("EDGETUNE_TP_VENV", ROOT / ".venv-tp"))
RATIO = 0.5
CASES = {
    "digits_cnn": ("edgetune.zoo:digits_cnn", "digits"),
    "efficientnet_lite0": ("edgetune.zoo:efficientnet_lite0", "sample-images"),
    "mobilenet_v2": ("edgetune.zoo:mobilenet_v2", "sample-images"),
}


def torch_pruning(criterion: str, work: Path) -> dict[str, Any]:
    test = load_dataset("digits", "test")
    torch.save(zoo.digits_cnn().state_dict(), work / "digits.pt")
    np.savez(work / "digits-test.npz", x=test.x, y=test.y)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [
        str(TP_VENV / "bin" / "python"),
        str(ROOT / "bench" / "torch_pruning_digits.py"),
        str(work / "digits.pt"),
        str(work / "digits-test.npz"),
        str(RATIO),
        criterion,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_case(name: str, model: str, calib: str, work: Path, rounds: int) -> dict[str, Any]:
    data = load_dataset(calib, "calibration", limit=128)
    evaluation = load_dataset("digits", "test") if name == "digits_cnn" else None
    log(f"[{name}] compress, unpruned and pruned {RATIO:g}")
    dense = compress(model, data, work / f"{name}-dense", eval_data=evaluation, quant=QuantConfig(samples=128))
    pruned = compress(
        model, data, work / f"{name}-pruned", eval_data=evaluation, quant=QuantConfig(samples=128), prune=PruneConfig(RATIO, "l2", 8)
    )
    row: dict[str, Any] = {"model": name, "ratio": RATIO, "criterion": "l2", "channel_multiple": 8, "pruning": pruned.report["pruning"]}
    if evaluation is not None:
        row["accuracy"] = {
            "dense_fp32": dense.report["evaluation"]["fp32_accuracy"],
            "pruned_fp32": pruned.report["evaluation"]["fp32_accuracy"],
        }
    sample = data.x[:1]
    row["latency_ms"] = {}
    for threads in (1, 2):
        log(f"[{name}] int8 latency at {threads} thread(s)")
        onnx = interleaved_latency(
            {
                "dense": (work / f"{name}-dense" / "model.onnx").read_bytes(),
                "pruned": (work / f"{name}-pruned" / "model.onnx").read_bytes(),
            },
            sample,
            threads,
            rounds,
        )
        runners = {k: TfliteRunner((work / f"{name}-{k}" / "model.tflite").read_bytes(), threads=threads) for k in ("dense", "pruned")}
        tfl = interleaved({k: partial(r.run_one, sample) for k, r in runners.items()}, rounds=rounds)
        row["latency_ms"][str(threads)] = {"onnx": onnx, "tflite": tfl}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds (smoke run)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (model, calib) in CASES.items():
            rows.append(bench_case(name, model, calib, work, rounds=3 if args.quick else 7))
        peer = torch_pruning("l2", work) if (TP_VENV / "bin" / "python").exists() else None
    lines = []
    for row in rows:
        for threads in ("1", "2"):
            lat = row["latency_ms"][threads]
            onnx_ratio = lat["onnx"]["pruned"]["median_ms"] / lat["onnx"]["dense"]["median_ms"]
            tfl_ratio = lat["tflite"]["pruned"]["median_ms"] / lat["tflite"]["dense"]["median_ms"]
            accuracy = "-"
            if "accuracy" in row:
                accuracy = f"{100 * row['accuracy']['dense_fp32']:.1f} -> {100 * row['accuracy']['pruned_fp32']:.1f}"
            lines.append(
                [
                    row["model"],
                    threads,
                    f"{row['pruning']['macs']['ratio']:.2f}",
                    f"{row['pruning']['parameters']['ratio']:.2f}",
                    f"{onnx_ratio:.2f}",
                    f"{tfl_ratio:.2f}",
                    accuracy,
                ]
            )
    print(table(lines, ["model", "thr", "MACs x", "params x", "ORT int8 lat x", "LiteRT int8 lat x", "fp32 acc % dense -> pruned"]))
    if peer is not None:
        ours = rows[0]["accuracy"]["pruned_fp32"]
        print(
            f"digits, {RATIO:g} channels, l2, no fine-tune: edgetune {100 * ours:.1f}% vs Torch-Pruning {peer['version']} {100 * peer['accuracy']:.1f}%"
        )
    else:
        print(f"Torch-Pruning environment missing ({TP_VENV}); run `make bench`")
    print(f"wrote {write_json('prune', {'benchmark': 'prune', 'rows': rows, 'torch_pruning': peer})}")


if __name__ == "__main__":
    main()
