"""Every zoo model's int8 artifacts on the emulated Raspberry Pi cores, against this host.

Each model is compressed once (int8, the target's defaults), then its model.tflite and
model.onnx run on emulated Cortex-A72 (Raspberry Pi 4) and Cortex-A76 (Raspberry Pi 5), the
two cores in parallel (one per host core), on every kernel path: TFLite's XNNPACK, optimized
built-in and reference kernels; ONNX Runtime with and without graph optimization. Inputs:
the digits test split for the digits CNN, the bundled sample-image crops for the 224x224
models, seeded random inputs for the MLPerf Tiny models (no bundled data of their kind).

The reach: all of it verified in at most 5 minutes, setup included when cached; at most
1 LSB on every output element for XNNPACK and reference kernels; top-1 agreement with the
host of at least 99.5% on every path.

    python bench/emulated_parity.py [--samples-224 12]

Prints a table and writes bench/results/emulated_parity.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

from edgetune.data import Dataset, load_dataset  # noqa: E402
from edgetune.pipeline import compress  # noqa: E402
from edgetune.profile.parity import ParityRequest, parity_all, public  # noqa: E402
from edgetune.profile.qemu import QemuDevice  # noqa: E402
from edgetune.profile.qemu_setup import setup  # noqa: E402
from edgetune.zoo import ZOO  # noqa: E402

DEVICES = ("qemu:raspberry-pi-4", "qemu:raspberry-pi-5")


def _inputs(name: str, samples_224: int) -> tuple[Any, np.ndarray, str]:
    entry = ZOO[name]
    if entry.data == "digits":
        test = load_dataset("digits:test", "test")
        return "digits", test.x, "digits:test"
    if entry.data == "sample-images":
        test = load_dataset("sample-images:test", "test", limit=samples_224)
        return "sample-images", test.x, f"sample-images:test (first {samples_224})"
    random = np.random.default_rng(1).standard_normal((100, *entry.input_shape)).astype(np.float32)
    calibration = Dataset(np.random.default_rng(0).standard_normal((64, *entry.input_shape)).astype(np.float32), None, "random")
    return calibration, random, "100 seeded random inputs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-224", type=int, default=12, help="sample-image crops per 224x224 model")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        compress_started = time.perf_counter()
        for name, entry in ZOO.items():
            log(f"compress {name}")
            calibration, samples, source = _inputs(name, args.samples_224)
            out = Path(tmp) / name
            compress(entry.build(), calibration, out)
            jobs += [(name, out / artifact, samples, source) for artifact in ("model.tflite", "model.onnx")]
        compress_seconds = time.perf_counter() - compress_started

        started = time.perf_counter()
        board = setup()  # a no-op when the board is cached
        setup_seconds = time.perf_counter() - started
        log(f"board: {'built' if board['built'] else 'cached'} ({setup_seconds:.1f} s)")

        def check(device: str) -> list[dict[str, Any]]:
            # One agent process per emulated core for every artifact: the imports are paid once.
            board = QemuDevice.parse(device)
            began = time.perf_counter()
            documents = parity_all([ParityRequest(path, board, samples, source) for _, path, samples, source in jobs])
            log(f"{device}: {len(documents)} artifacts in {time.perf_counter() - began:.1f} s")
            return [{**public(d), "model": name, "artifact": path.name} for d, (name, path, _, _) in zip(documents, jobs)]

        with ThreadPoolExecutor(max_workers=len(DEVICES)) as pool:  # one emulated core per host core
            for results in pool.map(check, DEVICES):
                rows += results
        total_seconds = time.perf_counter() - started

    lines, failures = [], []
    for row in rows:
        for kernels, path in row["paths"].items():
            strict = kernels in ("xnnpack", "reference")
            lsb_ok = not strict or (path["max_lsb"] is not None and path["max_lsb"] <= 1)
            agree_ok = path.get("top1_agreement", 1.0) >= 0.995
            if not (lsb_ok and agree_ok):
                failures.append(f"{row['device']} {row['model']} {row['artifact']} {kernels}")
            lines.append(
                [
                    row["model"],
                    row["artifact"],
                    row["core"],
                    kernels,
                    row["samples"],
                    path["max_lsb"],
                    f"{100 * path['differing_share']:.2f}%",
                    f"{100 * path['top1_agreement']:.1f}%" if "top1_agreement" in path else "-",
                    path.get("changed_predictions", "-"),
                    "ok" if lsb_ok and agree_ok else "MISS",
                ]
            )
    print(table(lines, ["model", "artifact", "core", "kernels", "samples", "max LSB", "differ", "top-1 agree", "changed", "reach"]))
    print(
        f"verified {len(rows)} artifact runs on {len(DEVICES)} emulated cores in {total_seconds:.0f} s"
        f" (setup {setup_seconds:.1f} s; compress, not counted, {compress_seconds:.0f} s); reach <= 300 s:"
        f" {'met' if total_seconds <= 300 else 'MISSED'}; parity reach: {'met' if not failures else 'MISSED on ' + ', '.join(failures)}"
    )
    document = {
        "benchmark": "emulated_parity",
        "board": board,
        "seconds": {"total": total_seconds, "setup": setup_seconds, "compress": compress_seconds},
        "failures": failures,
        "rows": rows,
    }
    print(f"wrote {write_json('emulated_parity', document)}")


if __name__ == "__main__":
    main()
