"""Recovery: the digits CNN pruned to 50% of its channels, fine-tuned within a wall-clock
budget, then quantized to int8: accuracy against the unpruned fp32 model, cross-entropy
alone against distillation, and how far each run overshot its budget.

    python bench/recover.py [--budget 60s]

Prints a table and writes bench/results/recover.json.
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


def run(mode: str, budget: str, out: Path) -> dict[str, Any]:
    config = FinetuneConfig(parse_budget(budget), distill_weight=0.0 if mode == "cross-entropy" else 0.5)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="60s", help="fine-tune budget per run (default 60s)")
    args = parser.parse_args()
    dense = compress(
        "edgetune.zoo:digits_cnn", load_dataset("digits", "calibration"), tempfile.mkdtemp(), eval_data=load_dataset("digits", "test")
    )
    fp32 = dense.report["evaluation"]["fp32_accuracy"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("distillation", "cross-entropy"):
            log(f"[{mode}] prune 50% + fine-tune {args.budget} + int8")
            rows.append(run(mode, args.budget, Path(tmp) / mode))
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
    print(table(lines, ["loss", "fine-tune s/budget", "overrun", "steps", "int8 acc %", "vs fp32 pp", "TFLite acc %"]))
    print(f"unpruned fp32 accuracy {100 * fp32:.2f}%; 50% channels, MACs {rows[0]['macs_ratio']:.2f}x; digits test split (360)")
    print(f"wrote {write_json('recover', {'benchmark': 'recover', 'fp32_accuracy': fp32, 'rows': rows})}")


if __name__ == "__main__":
    main()
