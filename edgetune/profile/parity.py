"""Parity between this host and a board (emulated under qemu, or real over SSH): the same
artifact, the same inputs, the same agent, on every kernel path (TFLite's XNNPACK, optimized built-in and reference kernels;
ONNX Runtime with and without graph optimization), and the outputs compared element by element.

Differences are counted in LSB of the artifact's output: raw integer steps for an int8 output,
the difference over the output's quantization scale for a float output behind a dequantize.
A float model has no LSB; its differences are reported in absolute terms only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.profile.measure import AGENT, parse_agent_output
from edgetune.profile.qemu import QemuDevice, run_agent
from edgetune.profile.remote import SshDevice

# The agent's kernel paths per artifact format (agent.py keeps its own copy: it imports nothing).
KERNELS = {".tflite": ("xnnpack", "builtin", "reference"), ".onnx": ("optimized", "unoptimized")}
NOTE = "emulated under qemu: results only; emulated timings say nothing about the board's speed"


@dataclass(frozen=True)
class ParityRequest:
    artifact: Path
    device: QemuDevice | SshDevice
    samples: np.ndarray  # float32, NCHW as edgetune's data sets are
    source: str  # where the samples came from, for the report
    kernels: tuple[str, ...] = ()  # none: every path of the artifact's runtime; others' names are ignored
    timeout_s: float = 1800.0
    ssh_config: Path | None = None


def parse_device(device: str) -> QemuDevice | SshDevice:
    """``qemu:TARGET`` or ``ssh://user@host[:port][?python=...]``: the boards parity runs on."""
    if device.startswith("qemu:"):
        return QemuDevice.parse(device)
    if device.startswith("ssh://"):
        return SshDevice.parse(device)
    raise InputError(f"outputs can be compared on qemu:TARGET or ssh:// devices, not {device!r}", "use --device qemu:raspberry-pi-4")


def sample_shape(path: Path) -> list[int]:
    """One input sample's shape (NCHW for images), as edgetune's data sets hold them."""
    return [int(d) for d in _runner(path).sample_shape]


def _runner(path: Path) -> Any:
    from edgetune.evaluate.runtime import OnnxRunner
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    return OnnxRunner(path) if path.suffix == ".onnx" else TfliteRunner(path.read_bytes())


def input_names(path: Path) -> list[str]:
    """The artifact's input names (data with several named inputs is matched to them)."""
    return list(_runner(path).input_names)


def random_samples(path: Path, count: int) -> tuple[np.ndarray, str]:
    """Seeded inputs for an artifact when no data is given: standard normal values, or zeros for
    integer inputs (token ids and masks; zero indexes every table), and what they are."""
    from edgetune.evaluate.runtime import OnnxRunner

    runner = _runner(path)
    shape = [count, *(int(d) for d in runner.sample_shape)]
    integer = runner.input_dtype == np.int64 if isinstance(runner, OnnxRunner) else runner.input["dtype"] == np.int32
    if integer:
        return np.zeros(shape, np.int64), f"{count} inputs of zero ids"
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32), f"{count} seeded random inputs (standard normal, seed 0)"


def dequantized(path: Path, outputs: np.ndarray) -> np.ndarray:
    """Raw outputs as the host's runners return them: float32, integer outputs dequantized."""
    if path.suffix == ".tflite" and outputs.ndim == 4:
        outputs = outputs.transpose(0, 3, 1, 2)  # NHWC back to the NCHW of edgetune's runners
    if not np.issubdtype(outputs.dtype, np.integer):
        return outputs.astype(np.float32)
    if path.suffix == ".tflite":
        from edgetune.evaluate.tflite_runtime import TfliteRunner

        scale, zero_point = TfliteRunner(path.read_bytes()).output["quantization"]
        return ((outputs.astype(np.float32) - zero_point) * scale).astype(np.float32)
    raise InputError(f"{path.name} returns {outputs.dtype} outputs with no scale edgetune can read", "export float outputs")


def output_lsb(path: Path) -> float | None:
    """The output's quantization step in the units the artifact returns: 1.0 for an integer
    output, the dequantize's scale for a float one, None for a float model."""
    if path.suffix == ".onnx":
        return _onnx_lsb(path)
    return _tflite_lsb(path)


def _onnx_lsb(path: Path) -> float | None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    output = graph.output[0]
    if output.type.tensor_type.elem_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return 1.0
    producer = next((n for n in graph.node if output.name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    initializers = {i.name: i for i in graph.initializer}
    scale = initializers.get(producer.input[1])
    values = numpy_helper.to_array(scale) if scale is not None else np.zeros(0)
    return float(values.reshape(-1)[0]) if values.size == 1 else None


def _tflite_lsb(path: Path) -> float | None:
    from edgetune.evaluate.tflite_runtime import interpreter_class, native_logs_silenced

    interpreter, _ = interpreter_class()
    with native_logs_silenced():
        model = interpreter(model_content=path.read_bytes())
    output = model.get_output_details()[0]
    if np.issubdtype(output["dtype"], np.integer):
        return 1.0
    tensors = {t["index"]: t for t in model.get_tensor_details()}
    for op in model._get_ops_details():
        if output["index"] in [int(t) for t in op["outputs"]] and op["op_name"] == "DEQUANTIZE":
            scale = float(tensors[int(op["inputs"][0])]["quantization"][0])
            return scale or None
    return None


def compare(host: np.ndarray, device: np.ndarray, lsb: float | None) -> dict[str, Any]:
    """Element-wise and top-1 comparison of two output arrays of the same shape."""
    if host.shape != device.shape:
        raise InputError(f"the board returned outputs of shape {list(device.shape)}, the host {list(host.shape)}", "report this as a bug")
    diff = np.abs(host.astype(np.float64) - device.astype(np.float64))
    result: dict[str, Any] = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_lsb": int(np.rint(diff.max() / lsb)) if lsb and diff.size else None,
        "differing_share": float((diff > 0).mean()) if diff.size else 0.0,
    }
    if host.ndim == 2 and host.shape[1] > 1:
        same = host.argmax(axis=1) == device.argmax(axis=1)
        result["top1_agreement"] = float(same.mean())
        result["changed_predictions"] = int((~same).sum())
    return result


def _host_jobs(jobs: Path, timeout_s: float) -> list[dict[str, Any]]:
    argv = [sys.executable, str(AGENT), "--jobs", str(jobs)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InputError(f"the host's runs took longer than {timeout_s:g} s", "give fewer samples") from None
    return list(parse_agent_output(done.stdout, done.stderr, done.returncode, "the artifacts", "this host")["jobs"])


def _checked(request: ParityRequest) -> ParityRequest:
    if request.artifact.suffix not in (".onnx", ".tflite"):
        raise InputError(f"a board runs .onnx and .tflite artifacts, not {request.artifact.name}", "pass model.onnx or model.tflite")
    if not request.artifact.is_file():
        raise InputError(f"artifact {request.artifact} does not exist", "check the path")
    return replace(request, kernels=tuple(k for k in request.kernels if k in KERNELS[request.artifact.suffix]))


def parity(request: ParityRequest) -> dict[str, Any]:
    """Outputs of the artifact on this host and on the board, compared per kernel path."""
    return parity_all([request])[0]


def parity_all(requests: list[ParityRequest]) -> list[dict[str, Any]]:
    """Several artifacts on one board: one agent process on each side runs them all (under
    emulation, importing numpy and the runtimes costs seconds per process)."""
    requests = [_checked(r) for r in requests]
    if len({str(r.device) for r in requests}) > 1:
        raise ValueError("parity_all takes requests for one device")
    with tempfile.TemporaryDirectory(prefix="edgetune-parity-") as folder:
        tmp = Path(folder)
        jobs = []
        for index, request in enumerate(requests):
            inputs = tmp / f"inputs-{index}.npy"
            np.save(inputs, np.ascontiguousarray(request.samples, dtype=np.float32))
            model = tmp / f"model-{index}{request.artifact.suffix}"  # the board sees these names, never the user's
            model.write_bytes(request.artifact.read_bytes())
            jobs.append({"model": str(model), "inputs": str(inputs), "kernels": ",".join(request.kernels), "index": index})
        timeout = sum(r.timeout_s for r in requests)
        (tmp / "host.json").write_text(json.dumps([{**j, "save": str(tmp / f"host-{j['index']}.npz")} for j in jobs]))
        hosts = _host_jobs(tmp / "host.json", timeout)
        boards = _board_jobs(requests, jobs, tmp, timeout)
        documents = []
        for index, (request, host, board) in enumerate(zip(requests, hosts, boards)):
            with np.load(tmp / f"host-{index}.npz") as here, np.load(tmp / f"board-{index}.npz") as there:
                outputs = {name: (here[name], there[name]) for name in here.files}
            documents.append(_document(request, host, board, outputs))
    return documents


def _board_jobs(requests: list[ParityRequest], jobs: list[dict[str, Any]], tmp: Path, timeout: float) -> list[dict[str, Any]]:
    device = requests[0].device
    if isinstance(device, SshDevice):
        from edgetune.profile.remote import run_remote_outputs

        return [
            run_remote_outputs(
                Path(j["model"]), device, Path(j["inputs"]), tmp / f"board-{j['index']}.npz", r.kernels, r.ssh_config, r.timeout_s
            )
            for r, j in zip(requests, jobs)
        ]
    (tmp / "board.json").write_text(json.dumps([{**j, "save": str(tmp / f"board-{j['index']}.npz")} for j in jobs]))
    label = ", ".join(r.artifact.name for r in requests)
    return list(run_agent(device, ["--jobs", str(tmp / "board.json")], timeout, label)["jobs"])


def _document(
    request: ParityRequest, host: dict[str, Any], board: dict[str, Any], outputs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    lsb = output_lsb(request.artifact)
    paths = {name: compare(here, there, lsb) for name, (here, there) in outputs.items()}
    emulated = isinstance(request.device, QemuDevice)
    warnings = []
    if emulated and host["runtime"] != board["runtime"]:
        warnings.append(
            f"the board has {board['runtime']}, this host {host['runtime']}: versions differ as well as kernels"
            " (rebuild it: edgetune device setup qemu --force)"
        )
    return {
        "schema": "edgetune.parity",
        "version": 1,
        "kind": "emulated" if emulated else "board",
        "artifact": str(request.artifact),
        "device": f"qemu:{request.device.target}" if isinstance(request.device, QemuDevice) else str(request.device),
        "core": request.device.core.qemu_cpu if isinstance(request.device, QemuDevice) else board["machine"].get("cpu"),
        "runtime": {"host": host["runtime"], "board": board["runtime"]},
        "machine": {"host": host["machine"], "board": board["machine"]},
        "data": request.source,
        "samples": int(len(request.samples)),
        "output_lsb": lsb,
        "paths": paths,
        "worst": worst(paths),
        "outputs": {name: there for name, (_, there) in outputs.items()},
        "latency": None,
        "note": NOTE if emulated else "results of the board's own runtime; bench measures its latency",
        "seconds": {"board_kernels": round(sum(board["seconds"].values()), 2)},
        "warnings": warnings,
    }


def worst(paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    lsbs = [p["max_lsb"] for p in paths.values() if p["max_lsb"] is not None]
    agreements = [p["top1_agreement"] for p in paths.values() if "top1_agreement" in p]
    return {
        "max_lsb": max(lsbs) if lsbs else None,
        "max_abs_diff": max((p["max_abs_diff"] for p in paths.values()), default=0.0),
        "min_top1_agreement": min(agreements) if agreements else None,
    }


def public(document: dict[str, Any]) -> dict[str, Any]:
    """The document without the raw output arrays (for JSON and reports)."""
    return {k: v for k, v in document.items() if k != "outputs"}
