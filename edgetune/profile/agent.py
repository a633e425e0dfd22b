"""edgetune's bench agent: time one .onnx or .tflite model and print one JSON document.

This file runs as a script in a child process on this host, or is copied to a board over
SSH and run there, so it is self-contained on purpose: it needs only the Python standard
library, numpy and the runtime (onnxruntime; ai-edge-litert or tflite-runtime). It must not
import edgetune.

    python3 agent.py MODEL [--threads N] [--runs N] [--min-seconds S] [--warmup N]
                           [--affinity 0,1] [--op-profile]
    python3 agent.py MODEL --outputs INPUTS.npy SAVE.npz [--kernels xnnpack,builtin,reference]
    python3 agent.py --jobs JOBS.json     (several --outputs runs in one process)

The second form runs every sample of INPUTS.npy (float32, NCHW, as edgetune's data sets are)
through each kernel path and saves the raw outputs, one array per path, for parity checks
between machines: TFLite's ``xnnpack`` (the default delegate), ``builtin`` (its optimized
built-in kernels) and ``reference`` kernels; ONNX Runtime's ``optimized`` and
``unoptimized`` (no graph optimization) sessions.

Exit codes: 0 measured; 3 the runtime is missing; 4 the runtime rejects the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

AGENT_VERSION = 1
# ONNX input types to numpy's names (numpy is imported where it runs, not here).
ONNX_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}
EXIT_NO_RUNTIME, EXIT_BAD_MODEL = 3, 4


def _status_kib(field: str) -> int | None:
    """VmRSS or VmHWM (the peak) of this process from /proc, in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware", "cpu model", "cpu part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fail(kind: str, message: str, code: int) -> None:
    print(json.dumps({"agent": AGENT_VERSION, "error": {"kind": kind, "message": message}}))
    sys.exit(code)


class OnnxModel:
    def __init__(self, path: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            _fail("missing-runtime", "onnxruntime is not installed", EXIT_NO_RUNTIME)
        self.ort = ort
        self.runtime = f"onnxruntime {ort.__version__}"
        self.path, self.threads = path, threads

    KERNELS = ("optimized", "unoptimized")

    def _session(self, profile: bool, optimized: bool = True):  # type: ignore[no-untyped-def]
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not optimized:
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
        try:
            return self.ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises several types for a bad model
            _fail("bad-model", f"onnxruntime rejects the model: {str(exc).splitlines()[0]}", EXIT_BAD_MODEL)

    def load(self) -> None:
        self.session = self._session(profile=False)
        self.inputs = self.session.get_inputs()

    def sample(self, np):  # type: ignore[no-untyped-def]
        """One input per model input (a text model's ids, mask and token types)."""
        feeds = {}
        for given in self.inputs:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in given.shape]
            feeds[given.name] = _random(np, shape, np.dtype(ONNX_TYPES.get(given.type, "float32")))
        return feeds

    def run(self, x) -> None:  # type: ignore[no-untyped-def]
        self.session.run(None, x)

    def ops(self, x, runs: int) -> dict:  # type: ignore[no-untyped-def, type-arg]
        """Kernel time per op type and per node, from ORT's profiler in a separate session
        (profiling slows the runs it watches, so the timed runs go without it): the median
        over ``runs`` profiled runs of each run's total, after one warm-up run that pays for
        allocations and is left out."""
        session = self._session(profile=True)
        for _ in range(runs + 1):
            session.run(None, x)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
        spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        per_run: list[dict] = [{} for _ in spans]  # type: ignore[type-arg]
        kinds: dict[str, str] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            which = next((i for i, (start, end) in enumerate(spans) if start <= event["ts"] <= end), None)
            if which is None:
                continue
            node = event["name"][: -len("_kernel_time")]
            kinds[node] = event.get("args", {}).get("op_name", "?")
            per_run[which][node] = per_run[which].get(node, 0.0) + event.get("dur", 0) / 1e3
        timed = per_run[1:] or per_run
        by_node = {node: _median([run.get(node, 0.0) for run in timed]) for node in kinds}
        by_type = {op: _median([sum(ms for n, ms in run.items() if kinds[n] == op) for run in timed]) for op in set(kinds.values())}
        return {
            "source": "onnxruntime profiler",
            "runs": len(timed),
            "statistic": f"median kernel time per inference over {len(timed)} profiled runs, after 1 warm-up run",
            "ms_by_op_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "ms_by_node": [{"node": n, "op": kinds[n], "ms": ms} for n, ms in sorted(by_node.items(), key=lambda kv: -kv[1])],
            # a dynamic-int8 file keeps its depthwise convs float by design: no warning for them
            "float_kernels": {} if self._format() == "dynamic-int8" else _float_kernels(list(kinds.values())),
        }

    def _format(self) -> str:
        return str(self.session.get_modelmeta().custom_metadata_map.get("edgetune.format", ""))

    def delegation(self) -> None:
        return None  # ONNX Runtime's CPU provider runs everything itself

    def outputs(self, np, samples, kernels: str):  # type: ignore[no-untyped-def]
        """Raw outputs of the samples with or without graph optimization, one sample per run."""
        session = self._session(profile=False, optimized=kernels == "optimized")
        inputs = session.get_inputs()

        def feeds(sample):  # type: ignore[no-untyped-def]  # several inputs are stacked on a sample's axis 0
            parts = [sample] if len(inputs) == 1 else list(sample)
            return {i.name: part[None].astype(np.dtype(ONNX_TYPES[i.type])) for i, part in zip(inputs, parts)}

        return np.concatenate([session.run(None, feeds(sample))[0] for sample in samples])


class TfliteModel:
    def __init__(self, path: str, threads: int) -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter

            self.runtime = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
        except ImportError:
            try:
                import tflite_runtime
                from tflite_runtime.interpreter import Interpreter

                self.runtime = f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
            except ImportError:
                _fail("missing-runtime", "neither ai-edge-litert nor tflite-runtime is installed", EXIT_NO_RUNTIME)
        self.interpreter_class = Interpreter
        self.path, self.threads = path, threads

    KERNELS = ("xnnpack", "builtin", "reference")

    def _interpreter(self, kernels: str = "xnnpack"):  # type: ignore[no-untyped-def]
        options = {}
        if kernels != "xnnpack":  # the default needs no resolver (older runtimes have none to pick)
            resolvers = sys.modules[self.interpreter_class.__module__].OpResolverType
            choice = {"builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}[kernels]
            options["experimental_op_resolver_type"] = getattr(resolvers, choice)
        with open(self.path, "rb") as handle:
            content = handle.read()  # from bytes, so that the flatbuffer verifier runs
        try:
            interpreter = self.interpreter_class(model_content=content, num_threads=self.threads, **options)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            _fail("bad-model", f"the TFLite interpreter rejects the model: {str(exc).splitlines()[0]}", EXIT_BAD_MODEL)
        return interpreter

    def load(self) -> None:
        self.interpreter = self._interpreter()
        self.inputs = self.interpreter.get_input_details()

    def outputs(self, np, samples, kernels: str):  # type: ignore[no-untyped-def]
        """Raw outputs of the samples on one kernel path, one sample per invoke. NCHW samples go
        in as NHWC; float samples into an integer input are quantized with its parameters."""
        interpreter = self._interpreter(kernels)
        inputs, wanted = interpreter.get_input_details(), interpreter.get_output_details()[0]
        results = []
        for sample in samples:
            if len(inputs) > 1:  # several inputs (token ids, mask, types), stacked on a sample's axis 0
                for given, part in zip(inputs, sample):
                    interpreter.set_tensor(given["index"], np.ascontiguousarray(part[None], dtype=given["dtype"]))
                interpreter.invoke()
                results.append(np.array(interpreter.get_tensor(wanted["index"])))
                continue
            given = inputs[0]
            x = sample[None].transpose(0, 2, 3, 1) if sample.ndim == 3 else sample[None]
            if given["dtype"] in (np.int8, np.uint8, np.int16):
                scale, zero_point = given["quantization"]
                info = np.iinfo(given["dtype"])
                x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
            interpreter.set_tensor(given["index"], np.ascontiguousarray(x, dtype=given["dtype"]))
            interpreter.invoke()
            results.append(np.array(interpreter.get_tensor(wanted["index"])))
        return np.concatenate(results)

    def sample(self, np):  # type: ignore[no-untyped-def]
        """One input per model input (a text model's ids, mask and token types)."""
        return {given["index"]: _random(np, [int(d) for d in given["shape"]], given["dtype"]) for given in self.inputs}

    def run(self, x) -> None:  # type: ignore[no-untyped-def]
        for index, value in x.items():
            self.interpreter.set_tensor(index, value)
        self.interpreter.invoke()

    def ops(self, x, runs: int) -> dict:  # type: ignore[no-untyped-def, type-arg]
        return {"source": None, "note": "the TFLite Python interpreter exposes no per-op timing; TFLite's benchmark_model (adb) does"}

    def delegation(self) -> dict:  # type: ignore[type-arg]
        int8 = any(
            d["dtype"].__name__ in ("int8", "uint8")
            for d in self.interpreter.get_tensor_details()
            if d["quantization_parameters"]["scales"].size
        )
        return {**delegation(self.interpreter), "int8": bool(int8)}


def delegation(interpreter) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Which ops the default delegate (XNNPACK) took from a TFLite interpreter.

    After allocate_tensors, each delegated partition is an extra DELEGATE node whose outputs
    are the partition's outputs and whose inputs are its inputs; the original nodes stay
    listed. An original node belongs to a partition when it is reached by walking back from
    the partition's outputs without crossing its inputs. (edgetune's TfliteRunner uses this too.)
    """
    ops = interpreter._get_ops_details()
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in original for t in op["outputs"]}
    delegated: set = set()  # type: ignore[type-arg]
    for partition in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in partition["inputs"]}
        frontier = [int(t) for t in partition["outputs"]]
        while frontier:
            tensor = frontier.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            frontier.extend(int(t) for t in ops[index]["inputs"])
    kept = sorted(op["op_name"] for op in original if op["index"] not in delegated)
    return {"ops": len(original), "delegated": len(delegated), "partitions": len(ops) - len(original), "not_delegated": kept}


FLOAT_COMPUTE = ("Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


def _float_kernels(ops: list) -> dict:  # type: ignore[type-arg]
    """Float convolution and matrix kernels in a model that also runs int8 ones: layers whose
    DequantizeLinear/QuantizeLinear pairs ORT did not fuse into int8 kernels on this host."""
    quantized = any(op.startswith("QLinear") or op in ("QGemm", "DequantizeLinear", "ConvInteger", "MatMulInteger") for op in ops)
    counts: dict = {}  # type: ignore[type-arg]
    for op in ops:
        if quantized and op in FLOAT_COMPUTE:
            counts[op] = counts.get(op, 0) + 1
    return counts


def _median(values: list) -> float:  # type: ignore[type-arg]
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _random(np, shape, dtype):  # type: ignore[no-untyped-def]
    generator = np.random.default_rng(0)
    if np.dtype(dtype) in (np.int32, np.int64):  # token ids: zeros index every table (latency does not depend on which row)
        return np.zeros(shape, dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return generator.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return generator.standard_normal(shape).astype(dtype)


def measure(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    if args.affinity:
        os.sched_setaffinity(0, {int(c) for c in args.affinity.split(",")})
    try:
        import numpy as np
    except ImportError:
        _fail("missing-runtime", "numpy is not installed", EXIT_NO_RUNTIME)

    kind = OnnxModel if args.model.endswith(".onnx") else TfliteModel
    model = kind(args.model, args.threads)
    rss_import, peak_import = _status_kib("VmRSS"), _status_kib("VmHWM")
    start = time.perf_counter()
    model.load()
    load_ms = (time.perf_counter() - start) * 1e3
    if args.load_only:
        return {"agent": AGENT_VERSION, "runtime": model.runtime, "loaded": True}
    x = model.sample(np)  # one array per model input
    first = next(iter(x.values()))
    start = time.perf_counter()
    model.run(x)
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(args.warmup):
        model.run(x)
    times: list = []  # type: ignore[type-arg]
    began = time.perf_counter()
    while len(times) < args.runs or time.perf_counter() - began < args.min_seconds:
        start = time.perf_counter()
        model.run(x)
        times.append((time.perf_counter() - start) * 1e3)
    peak_end = _status_kib("VmHWM")
    return {
        "agent": AGENT_VERSION,
        "runtime": model.runtime,
        "threads": args.threads,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": {
            "system": platform.system(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup": args.warmup,
        "times_ms": times,
        "memory": {
            "rss_after_import_kib": rss_import,
            "peak_after_import_kib": peak_import,
            "peak_end_kib": peak_end,
            "rss_end_kib": _status_kib("VmRSS"),
        },
        "ops": model.ops(x, args.profile_runs) if args.op_profile else None,
        "delegation": model.delegation(),
        "input": {"shape": [int(d) for d in first.shape], "dtype": str(first.dtype), "count": len(x)},
    }


def outputs(model_path: str, inputs: str, save: str, kernels: str, threads: int) -> dict:  # type: ignore[type-arg]
    """Every sample through every kernel path asked for; the arrays go to one .npz file."""
    try:
        import numpy as np
    except ImportError:
        _fail("missing-runtime", "numpy is not installed", EXIT_NO_RUNTIME)
    kind = OnnxModel if model_path.endswith(".onnx") else TfliteModel
    model = kind(model_path, threads)
    samples = np.load(inputs, allow_pickle=False)
    paths = kernels.split(",") if kernels else list(kind.KERNELS)
    unknown = [k for k in paths if k not in kind.KERNELS]
    if unknown:
        _fail("usage", f"kernel paths {unknown} do not exist for this model; use {', '.join(kind.KERNELS)}", 2)
    arrays, seconds = {}, {}
    for name in paths:
        start = time.perf_counter()
        arrays[name] = model.outputs(np, samples, name)
        seconds[name] = time.perf_counter() - start
    np.savez(save, **arrays)
    return {
        "agent": AGENT_VERSION,
        "runtime": model.runtime,
        "machine": {"system": platform.system(), "machine": platform.machine(), "cpu": _cpu_model(), "numpy": np.__version__},
        "samples": int(len(samples)),
        "kernels": paths,
        "seconds": seconds,
    }


def jobs(path: str, threads: int) -> dict:  # type: ignore[type-arg]
    """Several ``--outputs`` runs in one process (a JSON list of {model, inputs, save, kernels}):
    under emulation, importing numpy and the runtimes costs seconds each time."""
    with open(path) as handle:
        listed = json.load(handle)
    return {"agent": AGENT_VERSION, "jobs": [outputs(j["model"], j["inputs"], j["save"], j.get("kernels", ""), threads) for j in listed]}


def main() -> None:
    parser = argparse.ArgumentParser(description="edgetune bench agent")
    parser.add_argument("model", nargs="?", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--affinity", default="")
    parser.add_argument("--op-profile", action="store_true")
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--load-only", action="store_true", help="only load the model (the runtime's verifier runs)")
    parser.add_argument("--outputs", nargs=2, metavar=("INPUTS.npy", "SAVE.npz"), help="save raw outputs per kernel path")
    parser.add_argument("--kernels", default="", help="kernel paths for --outputs, comma-separated (default: all)")
    parser.add_argument("--jobs", metavar="JOBS.json", help="several --outputs runs in one process")
    args = parser.parse_args()
    if args.jobs:
        print(json.dumps(jobs(args.jobs, args.threads)))
    elif not args.model:
        parser.error("give MODEL or --jobs")
    elif args.outputs:
        print(json.dumps(outputs(args.model, args.outputs[0], args.outputs[1], args.kernels, args.threads)))
    else:
        print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
