"""The modes without calibration: edgetune's --mode dynamic-int8 and float16 against ONNX
Runtime's quantize_dynamic, in the same run.

ORT's tool runs on the very fp32 ONNX file that edgetune writes, twice: with its defaults (per
tensor) and per channel. Both ONNX Runtime's and LiteRT's latencies are the median of
interleaved rounds at one thread.

    python bench/modes.py [--quick]

Prints a table and writes bench/results/modes.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, log, table, write_json  # noqa: E402

from edgetune.data import load_dataset  # noqa: E402
from edgetune.evaluate.metrics import accuracy, agreement, sqnr_db  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.quantize import QuantConfig  # noqa: E402

CASES = {
    "digits_cnn": {"model": "edgetune.zoo:digits_cnn", "calib": "digits", "eval": "digits:test"},
    "efficientnet_lite0": {"model": "edgetune.zoo:efficientnet_lite0", "calib": "sample-images", "eval": "sample-images:test"},
}


def ort_dynamic(fp32: Path, out: Path, per_channel: bool) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    return time.perf_counter() - start


def _onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _tflite(path: Path) -> Any:
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    return TfliteRunner(path.read_bytes(), threads=1)


def bench_case(name: str, case: dict[str, str], work: Path, rounds: int) -> dict[str, Any]:
    calib, evaluation = load_dataset(case["calib"], "calibration", limit=128), load_dataset(case["eval"], "test")
    folders = {}
    for mode in ("dynamic-int8", "float16"):
        log(f"[{name}] edgetune --mode {mode}")
        started = time.perf_counter()
        compress(case["model"], calib, work / f"{name}-{mode}", eval_data=evaluation, quant=QuantConfig(mode=mode))
        folders[mode] = (work / f"{name}-{mode}", time.perf_counter() - started)
    fp32_path = folders["float16"][0] / "model.fp32.onnx"
    onnx_files = {"fp32": fp32_path, **{f"edgetune {m}": folder / "model.onnx" for m, (folder, _) in folders.items()}}
    walls = {f"edgetune {m}": wall for m, (_, wall) in folders.items()}
    for per_channel in (False, True):
        label = f"ort quantize_dynamic{' per-channel' if per_channel else ''}"
        log(f"[{name}] {label}")
        onnx_files[label] = work / f"{name}-{label.replace(' ', '-')}.onnx"
        walls[label] = ort_dynamic(fp32_path, onnx_files[label], per_channel)
    sessions = {label: _onnx_session(path) for label, path in onnx_files.items()}
    reference = _outputs(sessions["fp32"], evaluation.x)
    rows: dict[str, Any] = {}
    for label, session in sessions.items():
        out = _outputs(session, evaluation.x)
        rows[label] = {
            "bytes": onnx_files[label].stat().st_size,
            "agreement": agreement(out, reference),
            "sqnr_db": sqnr_db(reference, out),
        }
        if evaluation.y is not None and evaluation.has_classes:
            rows[label]["accuracy"] = accuracy(out, evaluation.y)
        rows[label]["wall_s"] = walls.get(label)
    tflite = {f"edgetune {m} (TFLite)": folder / "model.tflite" for m, (folder, _) in folders.items()}
    runners = {label: _tflite(path) for label, path in tflite.items()}
    for label, runner in runners.items():
        out = runner.run(evaluation.x)
        rows[label] = {"bytes": tflite[label].stat().st_size, "agreement": agreement(out, reference), "sqnr_db": sqnr_db(reference, out)}
    sample = evaluation.x[:1]
    log(f"[{name}] latency, {rounds} interleaved rounds at one thread")
    runs_once = {label: partial(session.run, None, {session.get_inputs()[0].name: sample}) for label, session in sessions.items()}
    runs_once |= {label: partial(runner.run, sample) for label, runner in runners.items()}
    for label, figures in interleaved(runs_once, rounds=rounds).items():
        rows[label]["latency_ms"] = figures
    return {"model": name, "evaluation": {"data": evaluation.source, "samples": len(evaluation)}, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds (smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            results.append(bench_case(name, case, Path(tmp), rounds=3 if args.quick else 7))
    lines = []
    for result in results:
        for label, row in result["rows"].items():
            lat = row["latency_ms"]
            lines.append(
                [
                    result["model"],
                    label,
                    f"{row['bytes'] / 1024:.0f} KiB",
                    f"{100 * row['accuracy']:.2f}%" if "accuracy" in row else "-",
                    f"{100 * row['agreement']:.1f}%",
                    f"{row['sqnr_db']:.1f}",
                    f"{lat['median_ms']:.3f} (±{lat['spread_ms'] / 2:.3f})",
                    f"{row['wall_s']:.1f}" if row.get("wall_s") is not None else "-",
                ]
            )
    print(table(lines, ["model", "artifact", "size", "accuracy", "agree fp32", "SQNR dB", "1-thread ms", "wall s"]))
    print(f"wrote {write_json('modes', {'results': results})}")


if __name__ == "__main__":
    main()
