"""Compress speed (issue 22): edgetune's wall time from a new process, with an empty capture
cache (cold) and with the capture cached (warm), each stage's time, against ONNX Runtime's
quantize_static (the ONNX file alone) and onnx2tf's int8 conversion (TFLite alone, with
TensorFlow), on the same model and calibration samples.

    python bench/compress_speed.py [--rounds 3] [--quick] [--models digits_cnn,efficientnet_lite0]

Every contender runs as its own process, timed from its start to its exit, and the rounds
interleave them so that machine noise hits all alike. The peers run in .venv-peers (made by
`make bench`; without it they are left out and the table says so). --quick: one round,
without onnx2tf.

Prints a table and writes bench/results/compress_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, run_peer, table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("EDGETUNE_PEERS_VENV", ROOT / ".venv-peers"))
EDGETUNE = Path(sys.executable).parent / "edgetune"
CASES = {
    "digits_cnn": {"model": "edgetune.zoo:digits_cnn", "calib": "digits", "eval": "digits:test"},
    "efficientnet_lite0": {"model": "edgetune.zoo:efficientnet_lite0", "calib": "sample-images", "eval": "sample-images:test"},
    "mobilenet_v2": {"model": "edgetune.zoo:mobilenet_v2", "calib": "sample-images", "eval": "sample-images:test"},
}
SAMPLES = 128
REACH = {"cold_s": 10.0, "warm_s": 6.0, "cold_eval_s": 12.0}  # EfficientNet-Lite0, issue 22

# ORT's quantize_static in its own process: QDQ, uint8 activations, int8 per-channel weights,
# MinMax calibration (the set-up bench/ptq.py found best), one sample per calibration batch.
ORT_SCRIPT = """
import sys, time, logging
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
logging.getLogger().setLevel(logging.ERROR)
source, calib, target = sys.argv[1:4]
x = np.load(calib)
class Reader(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{"input": x[i : i + 1]} for i in range(len(x))])
    def get_next(self):
        return next(self.batches, None)
start = time.perf_counter()
quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
print(time.perf_counter() - start)
"""


def edgetune_run(case: dict[str, str], out: Path, cache: Path | str, with_eval: bool, huge_pages: bool = True) -> dict[str, Any]:
    """One ``edgetune compress`` process: its wall time and its report's stage times.
    ``huge_pages=False``: without the exec into malloc's transparent huge pages (cli/launch.py)."""
    argv = [str(EDGETUNE), "compress", case["model"], "--calib", case["calib"], "-o", str(out), "--quiet", "--json"]
    if with_eval:
        argv += ["--eval", case["eval"]]
    env = {**os.environ, "EDGETUNE_CAPTURE_CACHE": str(cache), "EDGETUNE_HUGE_PAGES": "on" if huge_pages else "off"}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"edgetune compress failed: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    profile = report["profile"]
    return {
        "wall_s": wall,
        "startup_and_imports_s": (profile["process"]["startup"] or 0.0) + profile["process"]["imports"],
        "stages_s": {s["name"]: s["seconds"] for s in profile["stages"]},
        "agreement": report["evaluation"].get("top1_agreement"),
        "huge_pages": profile["process"].get("huge_pages"),
    }


def ort_run(fp32: Path, calib: Path, work: Path) -> float:
    script = work / "ort_quantize.py"
    script.write_text(ORT_SCRIPT)
    return run_peer([str(PEERS / "bin" / "python"), str(script), str(fp32), str(calib), str(work / "ort.onnx")], work, PEERS)


def onnx2tf_run(fp32: Path, calib_nchw: np.ndarray, work: Path) -> float:
    from tflite_export import onnx2tf

    return onnx2tf(fp32, calib_nchw, work)[1]


def bench_case(name: str, rounds: int, with_onnx2tf: bool, work: Path) -> dict[str, Any]:
    from edgetune.data import load_dataset

    case = CASES[name]
    calib_x = load_dataset(case["calib"], "calibration").x[:SAMPLES]
    np.save(work / "calib.npy", calib_x)
    peers = (PEERS / "bin" / "python").is_file()
    runs: dict[str, list[Any]] = {"cold": [], "warm": [], "warm_small_pages": [], "cold_eval": [], "ort_quantize_static": [], "onnx2tf": []}
    for index in range(rounds):
        cache = work / f"cache-{index}"
        log(f"[{name}] round {index + 1}/{rounds}: edgetune cold, warm, warm with 4 KiB pages, cold with --eval; peers")
        runs["cold"].append(edgetune_run(case, work / f"cold-{index}", cache, False))
        runs["warm"].append(edgetune_run(case, work / f"warm-{index}", cache, False))
        runs["warm_small_pages"].append(edgetune_run(case, work / f"small-{index}", cache, False, huge_pages=False))
        runs["cold_eval"].append(edgetune_run(case, work / f"eval-{index}", work / f"cache-eval-{index}", True))
        fp32 = work / f"cold-{index}" / "model.fp32.onnx"
        if peers:
            runs["ort_quantize_static"].append(ort_run(fp32, work / "calib.npy", work))
            if with_onnx2tf:
                runs["onnx2tf"].append(onnx2tf_run(fp32, calib_x, work / f"onnx2tf-{index}"))
    identical = all(
        (work / f"{kind}-{i}" / f).read_bytes() == (work / "cold-0" / f).read_bytes()
        for kind in ("cold", "warm", "small")
        for i in range(rounds)
        for f in ("model.onnx", "model.tflite", "model.edgetune")
    )
    return summarize(runs, identical)


def summarize(runs: dict[str, list[Any]], identical: bool) -> dict[str, Any]:
    def walls(key: str) -> list[float]:
        return [r["wall_s"] if isinstance(r, dict) else r for r in runs[key]]

    result: dict[str, Any] = {"artifacts_identical_cold_and_warm": identical}
    for key in runs:
        values = walls(key)
        if values:
            result[key] = {"median_s": float(np.median(values)), "min_s": min(values), "max_s": max(values), "runs": values}
    for key in ("cold", "warm", "warm_small_pages", "cold_eval"):
        stages = [r["stages_s"] for r in runs[key]]
        result[key]["stages_median_s"] = {s: float(np.median([r[s] for r in stages])) for s in stages[0]}
        result[key]["startup_and_imports_median_s"] = float(np.median([r["startup_and_imports_s"] for r in runs[key]]))
        result[key]["huge_pages"] = runs[key][0]["huge_pages"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(CASES))
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgetune-speed-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            results[name] = bench_case(name, rounds, not args.quick, work)
    print(render(results))
    path = write_json("compress_speed", {"rounds": rounds, "calibration_samples": SAMPLES, "reach": REACH, "models": results})
    log(f"wrote {path}")


def _cell(result: dict[str, Any], key: str) -> str:
    if key not in result:
        return "-"
    return f"{result[key]['median_s']:.2f} ({result[key]['min_s']:.2f}-{result[key]['max_s']:.2f})"


def _ratio(result: dict[str, Any], key: str) -> str:
    return f"{result[key]['median_s'] / result['cold']['median_s']:.1f}x" if key in result else "-"


def render(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        rows.append(
            [name, _cell(r, "cold"), _cell(r, "warm"), _cell(r, "warm_small_pages"), _cell(r, "cold_eval"), _cell(r, "ort_quantize_static")]
        )
        rows[-1] += [_ratio(r, "ort_quantize_static"), _cell(r, "onnx2tf"), _ratio(r, "onnx2tf")]
        rows[-1].append("yes" if r["artifacts_identical_cold_and_warm"] else "NO")
    header = [
        "model",
        "cold s",
        "warm s",
        "warm, 4 KiB pages s",
        "cold+eval s",
        "ORT static s",
        "ORT/cold",
        "onnx2tf s",
        "onnx2tf/cold",
        "same bytes",
    ]
    stages = []
    for name, r in results.items():
        for key in ("cold", "warm", "warm_small_pages"):
            parts = ", ".join(f"{s} {v:.2f}" for s, v in r[key]["stages_median_s"].items())
            stages.append(f"{name} {key}: start-up+imports {r[key]['startup_and_imports_median_s']:.2f}, {parts}")
    note = (
        "median (min-max) wall seconds of a new process each; cold: empty capture cache, warm: capture cached; both write"
        " ONNX int8 + TFLite int8 and evaluate on held-out calibration samples; 4 KiB pages: EDGETUNE_HUGE_PAGES=off"
        f" (huge pages were {'on' if any(r['warm'].get('huge_pages') for r in results.values()) else 'not available'} in the others)."
        " ORT static: the ONNX file alone."
        " onnx2tf: the TFLite file alone, with TensorFlow."
    )
    return table(rows, header) + "\n" + "\n".join(stages) + "\n" + note


if __name__ == "__main__":
    main()
