"""The gate on a noisy machine: does it catch real regressions and leave unchanged builds alone?

EfficientNet-Lite0 (224x224, int8) is compressed once and kept as the baseline (its figures
and its model.tflite). Every gate run then measures the new build and the baseline's
artifact in the same run, interleaved, 9 repetitions of at least 1 s each:

- the unchanged model is gated again and again (``--reruns``, 20 by default): every rerun
  should pass;
- a variant with extra MBConv blocks that add about 10% of the MACs should fail on latency;
- the digits CNN with perturbed weights should fail on accuracy against its own baseline
  (the untrained EfficientNet has no accuracy to lose, so the accuracy part uses digits).

    python bench/gate_noise.py [--reruns 20] [--neighbour] [--quantile 0.1]

``--neighbour`` reproduces a shared CI runner: this process, its bench children and a bursty
busy loop (busy 0.2-3 s, idle 0.2-3 s, seeded) are pinned to the same CPU, so the model loses
the core for whole seconds at a time, as a vCPU does to its neighbours. ``--quantile 0.5``
gates on repetition medians instead of the default 10th percentile, for comparison.

Prints a table and writes bench/results/gate_noise.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

from edgetune import zoo  # noqa: E402
from edgetune.capture import capture  # noqa: E402
from edgetune.data import Dataset  # noqa: E402
from edgetune.gate import gate  # noqa: E402
from edgetune.gate.config import GateConfig, TargetBudgets  # noqa: E402
from edgetune.ir.stats import graph_summary  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.zoo.efficientnet_lite import MBConv  # noqa: E402
from edgetune.zoo.layers import settle_batchnorm  # noqa: E402

SHAPE = (3, 224, 224)


def effnet_with_extra_blocks(target_share: float = 0.10) -> tuple[torch.nn.Module, float]:
    """EfficientNet-Lite0 with 40-channel MBConv blocks (28x28) added until MACs grow by ``target_share``."""
    base = zoo.efficientnet_lite0()
    base_macs = graph_summary(capture(base, SHAPE))["macs"]
    model = copy.deepcopy(base)
    layers = list(model.features)
    where = max(i for i, layer in enumerate(layers) if isinstance(layer, MBConv) and _out_channels(layer) == 40) + 1
    share = 0.0
    torch.manual_seed(1)
    while share < target_share:
        layers.insert(where, MBConv(40, 40, 5, 1, 6, 28))
        model.features = torch.nn.Sequential(*layers)
        share = graph_summary(capture(model, SHAPE))["macs"] / base_macs - 1
    settle_batchnorm(model, SHAPE, seed=0)
    return model.eval(), share


def _out_channels(block: MBConv) -> int:
    return next(m.out_channels for m in reversed(list(block.modules())) if isinstance(m, torch.nn.Conv2d))


def perturbed_digits(scale: float = 0.5) -> torch.nn.Module:
    model = zoo.digits_cnn()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * parameter.std())
    return model


NEIGHBOUR = """
import random, time
rng = random.Random(7)
while True:
    end = time.perf_counter() + rng.uniform(0.2, 3.0)
    while time.perf_counter() < end:
        pass
    time.sleep(rng.uniform(0.2, 3.0))
"""


@contextlib.contextmanager
def neighbour(enabled: bool) -> Iterator[None]:
    """Share CPU 0 with a bursty busy loop while the block runs (Linux only)."""
    if not enabled:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    process = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    try:
        yield
    finally:
        process.kill()
        process.wait()
        os.sched_setaffinity(0, before)


def _config(repetitions: int, seconds: float, budgets: dict[str, Any], alpha: float = 0.002, quantile: float = 0.1) -> GateConfig:
    # The deployed artifact only (model.tflite): the baseline's copy is re-measured beside it,
    # interleaved, in every gate run, which doubles the time per run.
    return GateConfig(
        recipe={},
        targets=(TargetBudgets("host", budgets),),
        artifacts=("model.tflite",),
        repetitions=repetitions,
        repetition_seconds=seconds,
        alpha=alpha,
        regression_quantile=quantile,
        source="bench",
    )


def _compress(model: Any, out: Path, data: Any, eval_data: Any = None) -> Path:
    compress(model, data, out, eval_data=eval_data)
    return out / "report.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reruns", type=int, default=20)
    parser.add_argument("--repetitions", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--neighbour", action="store_true", help="share the CPU with a bursty busy loop")
    parser.add_argument("--quantile", type=float, default=0.1, help="each repetition's statistic (0.5: median)")
    args = parser.parse_args()
    config = _config(args.repetitions, args.seconds, {"max_latency_p50_ms": 1e6}, quantile=args.quantile)
    random = Dataset(np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32), None, "random")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, neighbour(args.neighbour):
        root = Path(tmp)
        log("EfficientNet-Lite0: compress, record the baseline")
        report = _compress(zoo.efficientnet_lite0(), root / "base", random)
        baseline = root / "baseline.json"
        gate(config, report=report, baseline=baseline, update_baseline=True)
        log("digits CNN: baseline, then perturbed weights")
        digits_config = _config(9, 0.2, {"min_accuracy": 0.9}, quantile=args.quantile)
        digits_base = root / "digits-baseline.json"
        gate(
            digits_config,
            report=_compress(zoo.digits_cnn(), root / "digits", "digits", "digits:test"),
            baseline=digits_base,
            update_baseline=True,
        )
        document, _ = gate(
            digits_config, report=_compress(perturbed_digits(), root / "perturbed", "digits", "digits:test"), baseline=digits_base
        )
        rows.append({**_row("digits, perturbed weights", 0, document), "expected": "fail"})
        log(f"  -> {'pass' if document['passed'] else 'FAIL'}: {rows[-1]['why']}")
        log("EfficientNet-Lite0 with extra blocks")
        bigger, share = effnet_with_extra_blocks()
        document, _ = gate(config, report=_compress(bigger, root / "bigger", random), baseline=baseline)
        rows.append({**_row(f"+{100 * share:.1f}% MACs", 0, document), "expected": "fail"})
        log(f"  -> {'pass' if document['passed'] else 'FAIL'}: {rows[-1]['why']}")
        for index in range(args.reruns):
            document, _ = gate(config, report=report, baseline=baseline)
            rows.append(_row("unchanged", index, document))
            log(f"[unchanged {index + 1}/{args.reruns}] {'pass' if document['passed'] else 'FAIL'} {rows[-1]['slowdowns']}")
    unchanged = [r for r in rows if r["variant"] == "unchanged"]
    passed = sum(r["passed"] for r in unchanged)
    lines = [
        [r["variant"], r["run"], "pass" if r["passed"] else "FAIL", r["why"]]
        for r in rows
        if r["variant"] != "unchanged" or not r["passed"]
    ]
    print(
        table(
            [
                ["unchanged EfficientNet-Lite0", f"{len(unchanged)} reruns", f"{passed}/{len(unchanged)} pass", _slowdowns(unchanged)],
                *lines,
            ],
            ["variant", "run", "gate", "why"],
        )
    )
    name = "gate_noise" + ("_neighbour" if args.neighbour else "") + ("" if args.quantile == 0.1 else f"_q{args.quantile:g}")
    document = {
        "benchmark": "gate_noise",
        "neighbour": args.neighbour,
        "quantile": args.quantile,
        "rows": rows,
        "unchanged_passed": passed,
        "reruns": len(unchanged),
    }
    print(f"wrote {write_json(name, document)}")


def _row(variant: str, index: int, document: dict[str, Any]) -> dict[str, Any]:
    regressions = [c for c in document["checks"] if c["name"] == "latency_regression"]
    why = "; ".join(f"{c['name']} {c['artifact'] or ''}: {c['detail'] or c['value']}" for c in document["checks"] if not c["passed"]) or "-"
    return {
        "variant": variant,
        "run": index + 1,
        "passed": document["passed"],
        "why": why,
        "slowdowns": {c["artifact"]: c["value"]["slowdown"] for c in regressions},
        "p_values": {c["artifact"]: c["value"]["p_value"] for c in regressions},
        "thresholds": {c["artifact"]: c["value"]["threshold"] for c in regressions},
        "noise_cv": {c["artifact"]: c["value"]["noise_cv"] for c in regressions},
        "set_aside": {c["artifact"]: c["value"]["set_aside"] for c in regressions},
        "repetitions": {
            artifact: {
                "baseline": document["baseline_measurements"].get("host", {}).get(artifact, {}).get("repetition_ms"),
                "new": figures.get("repetition_ms"),
                "baseline_medians": document["baseline_measurements"].get("host", {}).get(artifact, {}).get("repetition_medians_ms"),
                "new_medians": figures.get("repetition_medians_ms"),
            }
            for artifact, figures in document["measurements"].get("host", {}).items()
        },
    }


def _slowdowns(rows: list[dict[str, Any]]) -> str:
    values = [v for r in rows for v in r["slowdowns"].values()]
    thresholds = [v for r in rows for v in r["thresholds"].values()]
    if not values:
        return "-"
    return f"change {100 * min(values):+.1f}%..{100 * max(values):+.1f}%, thresholds {100 * min(thresholds):.1f}%..{100 * max(thresholds):.1f}%"


if __name__ == "__main__":
    main()
