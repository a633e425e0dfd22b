"""Model coverage: every zoo model captured, calibrated and written to both int8 formats.

Per model: whether both artifacts were written, int8-versus-fp32 output cosine (the TFLite file
against PyTorch), TFLite-versus-ONNX int8 cosine, the share of TFLite operators XNNPACK
delegates, single-thread latency of both int8 artifacts (median of interleaved rounds), and 50%
channel pruning (l2; groups it cannot follow kept whole): the MAC ratio and the pruned int8
TFLite file's latency over the unpruned one's, timed in the same interleaved rounds; and whether
the model's fp32 ``.onnx`` file (PyTorch's TorchScript exporter, a dynamic batch axis) imports,
matches PyTorch and compresses too. The models are untrained (but the digits CNN), fed seeded
Gaussian inputs, calibrated with minmax+ defaults on 64 of them.

    python bench/coverage.py [--quick] [--models a,b]

Prints a table and writes bench/results/coverage.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, log, table, write_json  # noqa: E402

from edgetune import zoo  # noqa: E402
from edgetune.capture import capture  # noqa: E402
from edgetune.errors import EdgetuneError  # noqa: E402
from edgetune.evaluate.tflite_runtime import TfliteRunner  # noqa: E402
from edgetune.export.onnx import write_onnx  # noqa: E402
from edgetune.export.tflite import write_tflite  # noqa: E402
from edgetune.profile.agent import delegation  # noqa: E402
from edgetune.prune import PruneConfig, prune_channels  # noqa: E402
from edgetune.quantize import QuantConfig, calibrate  # noqa: E402


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def _onnx_session(blob: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def _pruned(name: str, calib: np.ndarray) -> tuple[bytes | None, str]:
    """50% of the channels (l2), calibrated and written: the TFLite file and the MAC ratio, or
    None and why nothing could be pruned."""
    entry = zoo.ZOO[name]
    graph = capture(entry.build(), entry.input_shape)
    note = ""
    try:
        report = prune_channels(graph, PruneConfig(0.5, "l2"))
    except EdgetuneError as exc:
        report = prune_channels(graph, PruneConfig(0.5, "l2", skip_unsupported=True))
        note = f" (some kept whole: {str(exc).split(' through ')[-1][:30]})"
    ratio = report.macs_after / report.macs_before
    if ratio >= 1.0:
        return None, f"1.00{note}"
    calibrate(graph, calib, QuantConfig(samples=len(calib)))
    return write_tflite(graph), f"{ratio:.2f}{note}"


def _from_onnx(name: str, calib: np.ndarray, x: np.ndarray, reference: np.ndarray) -> str:
    """The model exported to an fp32 ``.onnx`` file, imported, run in float against PyTorch and
    written to int8 TFLite: "yes" and the largest difference, or the import's error."""
    import tempfile
    import warnings

    import torch

    from edgetune.capture.onnx_import import import_onnx
    from edgetune.ir.torch_exec import GraphRunner, run_batches

    entry = zoo.ZOO[name]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        sample = torch.zeros(1, *entry.input_shape)
        torch.onnx.export(entry.build(), (sample,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        try:
            graph = import_onnx(path)
        except EdgetuneError as exc:
            return "no: " + str(exc)[:70]
    difference = float(np.abs(run_batches(GraphRunner(graph), x) - reference).max())
    calibrate(graph, calib, QuantConfig(samples=len(calib)))
    write_tflite(graph)
    return f"yes ({difference:.0e})"


def measure(name: str, rounds: int) -> dict[str, Any]:
    import torch

    entry = zoo.ZOO[name]
    model = entry.build()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, *entry.input_shape)).astype(np.float32)
    x = rng.standard_normal((16, *entry.input_shape)).astype(np.float32)
    start = time.perf_counter()
    graph = capture(model, entry.input_shape)
    calibrate(graph, calib, QuantConfig(samples=len(calib)))
    tflite_blob, onnx_blob = write_tflite(graph), write_onnx(graph, quantized=True, unsigned_activations=True)
    seconds = time.perf_counter() - start
    runner, session = TfliteRunner(tflite_blob), _onnx_session(onnx_blob)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    tflite_out = runner.run(x)
    onnx_out = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    share = delegation(runner.interpreter)
    pruned_blob, macs = _pruned(name, calib)
    contenders = {"tflite": lambda: runner.run(x[:1]), "onnx": lambda: session.run(None, {"input": x[:1]})}
    if pruned_blob is not None:
        pruned = TfliteRunner(pruned_blob)
        contenders["pruned"] = lambda: pruned.run(x[:1])
    latency = interleaved(contenders, rounds=rounds, runs=20, warmup=5)
    return {
        "model": name,
        "compressed": True,
        "compress_s": seconds,
        "cosine_int8_fp32": cosine(tflite_out, reference),
        "cosine_tflite_onnx": cosine(tflite_out, onnx_out),
        "xnnpack_delegated": f"{share['delegated']}/{share['ops']}",
        "not_delegated": sorted(set(share["not_delegated"])),
        "tflite_ms": latency["tflite"]["median_ms"],
        "onnx_ms": latency["onnx"]["median_ms"],
        "prune_50_macs": macs,
        "prune_50_latency": latency["pruned"]["median_ms"] / latency["tflite"]["median_ms"] if "pruned" in latency else None,
        "tflite_kb": len(tflite_blob) / 1024,
        "from_onnx": _from_onnx(name, calib, x, reference),
    }


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 latency rounds instead of 7")
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        log(f"coverage: {name}")
        try:
            rows.append(measure(name, 3 if args.quick else 7))
        except EdgetuneError as exc:
            rows.append({"model": name, "compressed": False, "error": str(exc)})
    header = [
        "model",
        "both int8",
        "cos int8/fp32",
        "cos tflite/onnx",
        "XNNPACK",
        "TFLite ms",
        "ONNX ms",
        "prune 50%: MACs",
        "latency",
        "TFLite KB",
        "from .onnx (max diff)",
    ]
    print(
        table(
            [
                [r["model"], "yes", f"{r['cosine_int8_fp32']:.4f}", f"{r['cosine_tflite_onnx']:.4f}", r["xnnpack_delegated"]]
                + [
                    f"{r['tflite_ms']:.2f}",
                    f"{r['onnx_ms']:.2f}",
                    r["prune_50_macs"],
                    _ratio(r["prune_50_latency"]),
                    f"{r['tflite_kb']:.0f}",
                    r["from_onnx"],
                ]
                if r["compressed"]
                else [r["model"], "no: " + r["error"][:60], "", "", "", "", "", "", "", "", ""]
                for r in rows
            ],
            header,
        )
    )
    path = write_json("coverage", {"models": rows})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
