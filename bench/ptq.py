"""Post-training quantization: edgetune against ONNX Runtime's quantize_static, same run.

ORT's tool is configured as its best measured set-up here: QDQ format, per-channel int8
weights, uint8 activations (U8S8), MinMax calibration, on the very fp32 ONNX file that
edgetune writes and the same calibration and evaluation samples.

    python bench/ptq.py [--quick]

Prints a table and writes bench/results/ptq.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_latency, log, table, timed, write_json  # noqa: E402

from edgetune.data import load_dataset  # noqa: E402
from edgetune.evaluate.metrics import accuracy, agreement, sqnr_db  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.quantize import QuantConfig  # noqa: E402

CASES = {
    "digits_cnn": {"model": "edgetune.zoo:digits_cnn", "calib": "digits", "eval": "digits:test"},
    "efficientnet_lite0": {"model": "edgetune.zoo:efficientnet_lite0", "calib": "sample-images", "eval": "sample-images:test"},
}
SAMPLES = 128


def ort_quantize(fp32_path: Path, out_path: Path, calib_x: np.ndarray, per_channel: bool = True, method: str = "minmax") -> float:
    """ORT's quantize_static in QDQ U8S8; MinMax (the best set-up measured here) or Percentile 99.999."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib_x[i : i + 1]} for i in range(len(calib_x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    start = time.perf_counter()
    quantize_static(
        str(fp32_path),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax,
        extra_options={"CalibPercentile": 99.999} if method == "percentile" else None,
    )
    return time.perf_counter() - start


def run_onnx(model: bytes | str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def cli_wall(case: dict[str, str], out: Path) -> float:
    """Wall time of the edgetune command itself, interpreter start and imports included."""
    edgetune = Path(sys.executable).with_name("edgetune")
    argv = [
        str(edgetune),
        "compress",
        case["model"],
        "--calib",
        case["calib"],
        "--calib-samples",
        str(SAMPLES),
        "-o",
        str(out),
        "--quiet",
        "--json",
    ]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_case(name: str, case: dict[str, str], work: Path, rounds: int) -> dict[str, Any]:
    log(f"[{name}] loading data")
    calib = load_dataset(case["calib"], "calibration", limit=SAMPLES)
    evaluation = load_dataset(case["eval"], "test")
    out = work / name
    log(f"[{name}] edgetune compress (API)")
    result, ours_wall = timed(lambda: compress(case["model"], calib, out, eval_data=evaluation, quant=QuantConfig(samples=SAMPLES)))
    log(f"[{name}] edgetune compress (CLI, cold process)")
    ours_cli = cli_wall(case, work / f"{name}-cli")
    log(f"[{name}] onnxruntime quantize_static")
    ort_path = work / f"{name}-ort.onnx"
    ort_wall = ort_quantize(out / "model.fp32.onnx", ort_path, calib.x)

    fp32 = run_onnx(str(out / "model.fp32.onnx"), evaluation.x)
    ours = run_onnx(str(out / "model.onnx"), evaluation.x)
    theirs = run_onnx(str(ort_path), evaluation.x)
    row: dict[str, Any] = {
        "model": name,
        "calibration_samples": len(calib),
        "evaluation": {"data": evaluation.source, "samples": len(evaluation)},
        "edgetune": {
            "agreement": agreement(ours, fp32),
            "sqnr_db": sqnr_db(fp32, ours),
            "bytes": (out / "model.onnx").stat().st_size,
            "wall_s_api": ours_wall,
            "wall_s_cli": ours_cli,
            "timings_s": result.report["timings_s"],
        },
        "ort_quantize_static": {
            "agreement": agreement(theirs, fp32),
            "sqnr_db": sqnr_db(fp32, theirs),
            "bytes": ort_path.stat().st_size,
            "wall_s": ort_wall,
        },
        "fp32": {"bytes": (out / "model.fp32.onnx").stat().st_size},
    }
    if evaluation.y is not None:
        row["fp32"]["accuracy"] = accuracy(fp32, evaluation.y)
        row["edgetune"]["accuracy"] = accuracy(ours, evaluation.y)
        row["ort_quantize_static"]["accuracy"] = accuracy(theirs, evaluation.y)
    sample = evaluation.x[:1]
    models = {"fp32": (out / "model.fp32.onnx").read_bytes(), "edgetune": (out / "model.onnx").read_bytes(), "ort": ort_path.read_bytes()}
    row["latency_ms"] = {}
    for threads in (1, 2):
        log(f"[{name}] latency at {threads} thread(s), {rounds} interleaved rounds")
        row["latency_ms"][str(threads)] = interleaved_latency(models, sample, threads, rounds=rounds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds (smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            rows.append(bench_case(name, case, Path(tmp), rounds=3 if args.quick else 7))
    lines = []
    for row in rows:
        ours, theirs, lat = row["edgetune"], row["ort_quantize_static"], row["latency_ms"]
        for threads in ("1", "2"):
            l_ours, l_ort, l_fp = (lat[threads][k]["median_ms"] for k in ("edgetune", "ort", "fp32"))
            lines.append(
                [
                    row["model"],
                    threads,
                    f"{l_fp:.3f}",
                    f"{l_ours:.3f}",
                    f"{l_ort:.3f}",
                    f"{l_ours / l_ort:.2f}",
                    f"{l_ours / l_fp:.2f}",
                    f"{100 * ours.get('accuracy', ours['agreement']):.2f}/{100 * theirs.get('accuracy', theirs['agreement']):.2f}",
                    f"{ours['sqnr_db']:.1f}/{theirs['sqnr_db']:.1f}",
                    f"{ours['bytes'] / 1024:.0f}/{theirs['bytes'] / 1024:.0f}",
                    f"{ours['wall_s_cli']:.1f}/{theirs['wall_s']:.1f}",
                ]
            )
    header = [
        "model",
        "thr",
        "fp32 ms",
        "ours ms",
        "ORT ms",
        "ours/ORT",
        "ours/fp32",
        "acc|agr % ours/ORT",
        "SQNR dB ours/ORT",
        "KiB ours/ORT",
        "wall s ours(cli)/ORT",
    ]
    print(table(lines, header))
    print("acc: top-1 accuracy on labelled data (digits); agr: top-1 agreement with fp32 otherwise. Latency: median of interleaved rounds.")
    path = write_json("ptq", {"benchmark": "ptq", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
