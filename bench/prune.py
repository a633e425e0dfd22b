"""Channel pruning at 50%: MACs, parameters and int8 latency against the unpruned model, and
digits accuracy right after pruning (no fine-tune) against Torch-Pruning, same ratio and criterion.
BatchNorm re-estimation (on by default) is measured on and off: on digits, and on
EfficientNet-Lite2 with real ImageNet weights (when `make bench` installed them) by top-1
agreement and SQNR against the unpruned fp32 model on held-out crops.

Torch-Pruning runs in its own environment (.venv-tp, made by `make bench`), never in edgetune's.

    python bench/prune.py [--quick]

Prints a table and writes bench/results/prune.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
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


def reestimation_on_lite2() -> list[dict[str, Any]]:
    """Agreement with the unpruned fp32 Lite2 right after pruning, with and without re-estimation."""
    from accuracy import efficientnet_lite2, photo_crops

    from edgetune.capture import capture
    from edgetune.evaluate.metrics import agreement, sqnr_db
    from edgetune.ir.torch_exec import GraphRunner, run_batches
    from edgetune.prune import prune

    model = efficientnet_lite2()
    if model is None:
        log("efficientnet-lite2: packages missing (make bench installs them into .bench-packages); skipped")
        return []
    calib, test = photo_crops("calibration").take(128), photo_crops("test")
    base = capture(model, (3, 224, 224))
    reference = run_batches(GraphRunner(base), test.x, batch=32)
    rows = []
    for kind, ratio in (("channel", 0.1), ("channel", 0.25), ("magnitude", 0.3), ("magnitude", 0.5)):
        for reestimate in (False, True):
            log(f"[efficientnet_lite2] {kind}:{ratio:g}, BatchNorm re-estimation {'on' if reestimate else 'off'}")
            graph = copy.deepcopy(base)
            start = time.perf_counter()
            prune(graph, PruneConfig(ratio, kind=kind, reestimate=reestimate), calib.x, calib.y)
            seconds = time.perf_counter() - start
            out = run_batches(GraphRunner(graph), test.x, batch=32)
            rows.append(
                {
                    "prune": f"{kind}:{ratio:g}",
                    "reestimate": reestimate,
                    "agreement": agreement(reference, out),
                    "sqnr_db": sqnr_db(reference, out),
                    "prune_s": round(seconds, 2),
                }
            )
    return rows


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
        plain = compress(
            model,
            data,
            work / f"{name}-pruned-no-bn",
            eval_data=evaluation,
            quant=QuantConfig(samples=128),
            prune=PruneConfig(RATIO, "l2", 8, reestimate=False),
        )
        row["accuracy"] = {
            "dense_fp32": dense.report["evaluation"]["fp32_accuracy"],
            "pruned_fp32": pruned.report["evaluation"]["fp32_accuracy"],
            "pruned_fp32_without_reestimation": plain.report["evaluation"]["fp32_accuracy"],
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
    lite2 = [] if args.quick else reestimation_on_lite2()
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
        ours, plain = rows[0]["accuracy"]["pruned_fp32"], rows[0]["accuracy"]["pruned_fp32_without_reestimation"]
        print(
            f"digits, {RATIO:g} channels, l2, no fine-tune: edgetune {100 * ours:.1f}% ({100 * plain:.1f}% without BatchNorm"
            f" re-estimation) vs Torch-Pruning {peer['version']} {100 * peer['accuracy']:.1f}%"
        )
    else:
        print(f"Torch-Pruning environment missing ({TP_VENV}); run `make bench`")
    if lite2:
        print("\nEfficientNet-Lite2 (ImageNet weights) right after pruning, against the unpruned fp32 model:")
        print(
            table(
                [
                    [r["prune"], "on" if r["reestimate"] else "off", f"{100 * r['agreement']:.1f}", f"{r['sqnr_db']:.2f}", r["prune_s"]]
                    for r in lite2
                ],
                ["prune", "BN re-estimation", "top-1 agreement %", "SQNR dB", "prune s"],
            )
        )
    document = {"benchmark": "prune", "rows": rows, "torch_pruning": peer, "reestimation_lite2": lite2}
    print(f"wrote {write_json('prune', document)}")


if __name__ == "__main__":
    main()
