"""TFLite: edgetune's own writer against onnx2tf (TensorFlow's converter underneath), same run.

onnx2tf runs in its own environment (.venv-peers: onnx2tf 1.28.8, TensorFlow 2.21, made by
`make bench`), never in edgetune's. Both convert the very fp32 ONNX file edgetune wrote,
calibrated on the same samples; both artifacts run on LiteRT with XNNPACK.

    python bench/tflite_export.py [--quick]

(Not bench/tflite.py: a script of that name would shadow the tflite package it imports.)

Prints a table and writes bench/results/tflite.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, log, run_peer, table, timed, write_json  # noqa: E402

from edgetune.data import load_dataset  # noqa: E402
from edgetune.evaluate.metrics import accuracy, agreement, sqnr_db  # noqa: E402
from edgetune.evaluate.tflite_runtime import TfliteRunner  # noqa: E402
from edgetune.export.tflite import write_tflite  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.profile.agent import delegation  # noqa: E402
from edgetune.quantize import QuantConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("EDGETUNE_PEERS_VENV", ROOT / ".venv-peers"))
ONNX2TF_VERSION = "1.28.8"
CASES = {
    "digits_cnn": {"model": "edgetune.zoo:digits_cnn", "calib": "digits", "eval": "digits:test"},
    "efficientnet_lite0": {"model": "edgetune.zoo:efficientnet_lite0", "calib": "sample-images", "eval": "sample-images:test"},
}
SAMPLES = 128


def onnx2tf(fp32_onnx: Path, calib_nchw: np.ndarray, work: Path) -> tuple[Path, float]:
    """onnx2tf's int8 model with float input/output (its *_integer_quant.tflite), and its wall time."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "model.onnx"
    shutil.copy(fp32_onnx, source)  # onnx2tf rewrites its input file
    nhwc = np.ascontiguousarray(calib_nchw.transpose(0, 2, 3, 1))
    np.save(work / "calib.npy", nhwc)
    # For 3-channel inputs onnx2tf fetches a sample file unless this one lies in the working folder.
    sample = np.resize(nhwc[:, :128, :128, :], (20, 128, 128, nhwc.shape[-1])).astype(np.float32)
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", sample)
    channels = nhwc.shape[-1]
    mean, std = "[[[[" + ",".join(["0.0"] * channels) + "]]]]", "[[[[" + ",".join(["1.0"] * channels) + "]]]]"
    argv = [str(PEERS / "bin" / "onnx2tf"), "-i", str(source), "-o", str(work / "out"), "-oiqt", "-qt", "per-channel"]
    argv += ["-cind", "input", str(work / "calib.npy"), mean, std]
    return work / "out" / "model_integer_quant.tflite", run_peer(argv, work, PEERS)


def bench_case(name: str, case: dict[str, str], work: Path, rounds: int) -> dict[str, Any]:
    calib = load_dataset(case["calib"], "calibration", limit=SAMPLES)
    evaluation = load_dataset(case["eval"], "test")
    out = work / name
    log(f"[{name}] edgetune compress")
    result, ours_wall = timed(lambda: compress(case["model"], calib, out, eval_data=evaluation, quant=QuantConfig(samples=SAMPLES)))
    _, write_s = timed(lambda: write_tflite(result.graph))
    log(f"[{name}] onnx2tf {ONNX2TF_VERSION}")
    theirs_path, theirs_wall = onnx2tf(out / "model.fp32.onnx", calib.x, work / f"{name}-onnx2tf")
    ours_blob, theirs_blob = (out / "model.tflite").read_bytes(), theirs_path.read_bytes()
    from edgetune.evaluate.runtime import OnnxRunner

    fp32 = OnnxRunner(out / "model.fp32.onnx").run(evaluation.x)
    ours = TfliteRunner(ours_blob).run(evaluation.x)
    theirs = TfliteRunner(theirs_blob).run(evaluation.x)
    row: dict[str, Any] = {
        "model": name,
        "parameters": result.report["model"]["parameters"],
        "evaluation": {"data": evaluation.source, "samples": len(evaluation)},
        "edgetune": {
            "agreement": agreement(ours, fp32),
            "sqnr_db": sqnr_db(fp32, ours),
            "bytes": len(ours_blob),
            "compress_wall_s": ours_wall,
            "tflite_write_s": write_s,
            "delegation": delegation(TfliteRunner(ours_blob).interpreter),
        },
        "onnx2tf": {
            "version": ONNX2TF_VERSION,
            "agreement": agreement(theirs, fp32),
            "sqnr_db": sqnr_db(fp32, theirs),
            "bytes": len(theirs_blob),
            "wall_s": theirs_wall,
            "delegation": delegation(TfliteRunner(theirs_blob).interpreter),
        },
    }
    if evaluation.y is not None:
        row["fp32_accuracy"] = accuracy(fp32, evaluation.y)
        row["edgetune"]["accuracy"] = accuracy(ours, evaluation.y)
        row["onnx2tf"]["accuracy"] = accuracy(theirs, evaluation.y)
    sample = evaluation.x[:1]
    row["latency_ms"] = {}
    for threads in (1, 2):
        log(f"[{name}] LiteRT latency at {threads} thread(s), {rounds} interleaved rounds")
        runners = {"edgetune": TfliteRunner(ours_blob, threads=threads), "onnx2tf": TfliteRunner(theirs_blob, threads=threads)}
        row["latency_ms"][str(threads)] = interleaved({k: partial(r.run_one, sample) for k, r in runners.items()}, rounds=rounds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds (smoke run)")
    args = parser.parse_args()
    if not (PEERS / "bin" / "onnx2tf").exists():
        sys.exit(f"error: onnx2tf is not installed in {PEERS}; run `make bench`, which creates that environment")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            rows.append(bench_case(name, case, Path(tmp), rounds=3 if args.quick else 7))
    lines = []
    for row in rows:
        ours, theirs = row["edgetune"], row["onnx2tf"]
        for threads in ("1", "2"):
            lat = row["latency_ms"][threads]
            l_ours, l_theirs = lat["edgetune"]["median_ms"], lat["onnx2tf"]["median_ms"]
            lines.append(
                [
                    row["model"],
                    threads,
                    f"{l_ours:.3f}",
                    f"{l_theirs:.3f}",
                    f"{l_ours / l_theirs:.2f}",
                    f"{100 * ours.get('accuracy', ours['agreement']):.2f}/{100 * theirs.get('accuracy', theirs['agreement']):.2f}",
                    f"{ours['sqnr_db']:.1f}/{theirs['sqnr_db']:.1f}",
                    f"{ours['bytes'] / 1024:.0f}/{theirs['bytes'] / 1024:.0f}",
                    f"{ours['compress_wall_s']:.1f}/{theirs['wall_s']:.1f}",
                    f"{ours['tflite_write_s']:.2f}",
                ]
            )
    header = ["model", "thr", "ours ms", "onnx2tf ms", "ours/theirs", "acc|agr % ours/theirs", "SQNR dB", "KiB", "wall s", "write s"]
    print(table(lines, header))
    print(
        "LiteRT with XNNPACK; latency: median of interleaved rounds. wall: edgetune compress (calibrate + both formats + evaluation) vs onnx2tf's conversion."
    )
    print(f"wrote {write_json('tflite', {'benchmark': 'tflite', 'onnx2tf': ONNX2TF_VERSION, 'rows': rows})}")


if __name__ == "__main__":
    main()
