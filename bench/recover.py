"""Recovery: the digits CNN pruned to 50% of its channels and quantized to int8, recovered
within a wall-clock budget: accuracy against the unpruned fp32 model; distillation against
cross-entropy alone; a float fine-tune then post-training quantization (PTQ) against
quantization-aware training (QAT); how far each run overshot its budget. Then training
memory: MobileNetV2 (96x96) fine-tuned under memory budgets, each run in a fresh process,
the sampled peak RSS against the budget.

    python bench/recover.py [--budget 60s] [--memory 192MB,384MB]

Prints two tables and writes bench/results/recover.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

from edgetune.data import load_dataset  # noqa: E402
from edgetune.finetune import FinetuneConfig, parse_budget  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.prune import PruneConfig  # noqa: E402

MODES = {
    "PTQ after fine-tune, distillation": {},
    "PTQ after fine-tune, cross-entropy": {"distill_weight": 0.0},
    "QAT, distillation": {"qat": True},
}


def run(mode: str, budget: str, out: Path) -> dict[str, Any]:
    config = FinetuneConfig(parse_budget(budget), **MODES[mode])  # type: ignore[arg-type]
    calib, test = load_dataset("digits", "calibration"), load_dataset("digits", "test")
    start = time.perf_counter()
    result = compress(
        "edgetune.zoo:digits_cnn",
        calib,
        out,
        eval_data=test,
        prune=PruneConfig(0.5, channel_multiple=8),
        finetune=config,
        train_data=load_dataset("digits", "train"),
    )
    wall = time.perf_counter() - start
    recovery = result.report["finetune"]
    return {
        "mode": mode,
        "budget_s": config.budget.amount,
        "finetune_s": recovery["seconds"],
        "overrun": recovery["seconds"] / config.budget.amount - 1.0,
        "steps": recovery["steps"],
        "compress_wall_s": wall,
        "int8_accuracy": result.report["evaluation"]["int8_accuracy"],
        "pruned_fp32_accuracy": result.report["evaluation"]["fp32_accuracy"],
        "tflite_accuracy": result.report["evaluation"]["tflite"]["accuracy"],
        "macs_ratio": result.report["pruning"]["macs"]["ratio"],
        "accuracy_after_compression": result.report["recovery"]["accuracy_after_compression"],
        "peak_rss_delta_mib": recovery["memory"]["peak_rss_delta_bytes"] / 2**20,
    }


def memory_child(budget: str, qat: bool) -> None:
    """One memory-budgeted fine-tune in this (fresh) process; prints its report as JSON."""
    import json

    import numpy as np

    from edgetune import zoo
    from edgetune.capture import capture
    from edgetune.data import Dataset
    from edgetune.finetune import finetune, parse_memory
    from edgetune.quantize import QuantConfig, calibrate

    graph = capture(zoo.mobilenet_v2(), (3, 96, 96))
    teacher = capture(zoo.mobilenet_v2(), (3, 96, 96))
    x = np.random.default_rng(0).standard_normal((320, 3, 96, 96)).astype(np.float32)
    if qat:
        calibrate(graph, x[:32], QuantConfig())
    config = FinetuneConfig(parse_budget("12steps"), memory=parse_memory(budget), qat=qat, eval_every=1000)
    report = finetune(graph, Dataset(x, None, "random 96x96"), config, teacher=teacher)
    print(json.dumps(report["memory"] | {"batch_size": report["batch_size"], "seconds": report["seconds"]}))


def memory_run(budget: str, qat: bool) -> dict[str, Any]:
    import json
    import subprocess

    argv = [sys.executable, __file__, "--memory-child", budget] + (["--qat"] if qat else [])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return {"budget": budget, "qat": qat, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="60s", help="fine-tune budget per run (default 60s)")
    parser.add_argument("--memory", default="192MB,384MB", help="training-memory budgets for MobileNetV2 (comma separated)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--qat", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.qat)
        return
    dense = compress(
        "edgetune.zoo:digits_cnn", load_dataset("digits", "calibration"), tempfile.mkdtemp(), eval_data=load_dataset("digits", "test")
    )
    fp32 = dense.report["evaluation"]["fp32_accuracy"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, mode in enumerate(MODES):
            log(f"[{mode}] prune 50% + int8, recovery {args.budget}")
            rows.append(run(mode, args.budget, Path(tmp) / str(index)))
    lines = [
        [
            r["mode"],
            f"{r['finetune_s']:.1f}/{r['budget_s']:.0f}",
            f"{100 * r['overrun']:+.2f}%",
            r["steps"],
            f"{100 * r['int8_accuracy']:.2f}",
            f"{100 * (r['int8_accuracy'] - fp32):+.2f}",
            f"{100 * r['tflite_accuracy']:.2f}",
        ]
        for r in rows
    ]
    print(table(lines, ["recovery", "fine-tune s/budget", "overrun", "steps", "int8 acc %", "vs fp32 pp", "TFLite acc %"]))
    print(
        f"unpruned fp32 accuracy {100 * fp32:.2f}%; pruned int8 without recovery {100 * rows[0]['accuracy_after_compression']:.2f}%;"
        f" 50% channels, MACs {rows[0]['macs_ratio']:.2f}x; digits test split (360)"
    )
    memory = []
    for budget in args.memory.split(","):
        for qat in (False, True):
            log(f"[memory] MobileNetV2 96x96, budget {budget}, {'QAT' if qat else 'float'}")
            memory.append(memory_run(budget, qat))
    lines = [
        [
            m["budget"],
            "QAT" if m["qat"] else "float",
            m["plan"]["batch_size"],
            "yes" if m["plan"]["gradient_checkpointing"] else "no",
            m["plan"]["frozen_input_layers"],
            f"{m['plan']['estimate_bytes'] / 2**20:.0f}",
            f"{m['peak_rss_delta_bytes'] / 2**20:.0f}",
            "yes" if m["peak_rss_delta_bytes"] <= m["budget_bytes"] else "NO",
        ]
        for m in memory
    ]
    print(table(lines, ["budget", "mode", "batch", "checkpointing", "frozen layers", "planned MiB", "peak RSS +MiB", "within"]))
    document = {"benchmark": "recover", "fp32_accuracy": fp32, "rows": rows, "memory": memory}
    print(f"wrote {write_json('recover', document)}")


if __name__ == "__main__":
    main()
