"""TFLite interpreters for artifacts: LiteRT (ai-edge-litert) first, tflite-runtime as fallback.

Models are always passed as bytes (``model_content=``): the Python interpreter runs the
flatbuffer verifier on that path only, not with ``model_path=``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgetune.errors import InputError, RuntimeFailure

BATCH = 8  # samples per invoke when evaluating; the same outputs as any other (see runtime.BATCH)


def interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert import __version__ as version
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {version}"
    except ImportError:
        pass
    try:
        from tflite_runtime import __version__ as version
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, f"tflite-runtime {version}"
    except ImportError:
        raise InputError("no TFLite interpreter is installed", "pip install ai-edge-litert (or tflite-runtime)") from None


def reference_resolver() -> Any:
    """The op resolver of TFLite's reference kernels (no XNNPACK, no optimized kernels)."""
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:
        from tflite_runtime.interpreter import OpResolverType
    return OpResolverType.BUILTIN_REF


@contextmanager
def native_logs_silenced() -> Iterator[None]:
    """Silence what the interpreter's C++ code prints on stderr ("Created TensorFlow Lite
    XNNPACK delegate for CPU."), unless edgetune runs with --debug."""
    if os.environ.get("EDGETUNE_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class TfliteRunner:
    """A TFLite interpreter over model bytes that takes NCHW float samples like the ONNX runner."""

    def __init__(self, model: bytes, threads: int | None = None, resolver: Any = None) -> None:
        interpreter, self.runtime = interpreter_class()
        kwargs: dict[str, Any] = {"model_content": model, "num_threads": threads}
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver
        try:
            with native_logs_silenced():
                self.interpreter = interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InputError(
                f"the TFLite interpreter rejects the model: {str(exc).splitlines()[0]}", "check that it is a valid .tflite file"
            ) from exc
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(outputs) != 1:
            raise InputError(f"the TFLite model has {len(outputs)} outputs", "edgetune runs single-output models")
        if len({(str(i["dtype"]), tuple(i["shape"][1:])) for i in inputs}) != 1:
            raise InputError(
                f"the TFLite model's {len(inputs)} inputs differ in type or shape",
                "edgetune runs models whose inputs share one shape and type (token ids, attention mask, token types)",
            )
        self.inputs, self.output = inputs, outputs[0]
        self.input = inputs[0]
        self.batch = int(self.input["shape"][0])

    @property
    def input_names(self) -> list[str]:
        return [str(given["name"]) for given in self.inputs]

    @property
    def nhwc(self) -> bool:
        return len(self.input["shape"]) == 4

    @property
    def sample_shape(self) -> list[int]:
        """The per-sample input shape in the NCHW layout the data is in (several inputs stacked on axis 0)."""
        shape = [int(d) for d in self.input["shape"][1:]]
        stacked = [len(self.inputs)] if len(self.inputs) > 1 else []
        return stacked + ([shape[2], shape[0], shape[1]] if self.nhwc else shape)

    def _set_inputs(self, chunk: np.ndarray) -> None:
        """One batch into the inputs: several are stacked on axis 1 (data.Dataset)."""
        if len(self.inputs) == 1:
            self.interpreter.set_tensor(self.input["index"], self._feed(chunk))
            return
        for i, given in enumerate(self.inputs):
            self.interpreter.set_tensor(given["index"], np.ascontiguousarray(chunk[:, i], dtype=given["dtype"]))

    def check_samples(self, samples: np.ndarray, source: str) -> None:
        expected = self.sample_shape
        if list(samples.shape[1:]) != expected:
            raise InputError(
                f"samples of {source} have shape {'x'.join(map(str, samples.shape[1:]))} but the model takes {'x'.join(map(str, expected))} (NCHW)",
                "give data preprocessed to the model's input shape",
            )

    def _feed(self, chunk: np.ndarray) -> np.ndarray:
        if self.nhwc:
            chunk = chunk.transpose(0, 2, 3, 1)
        if self.input["dtype"] == np.int8:
            scale, zero_point = self.input["quantization"]
            chunk = np.clip(np.round(chunk / scale) + zero_point, -128, 127).astype(np.int8)
        return np.ascontiguousarray(chunk, dtype=self.input["dtype"])

    def _fetch(self) -> np.ndarray:
        value = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] == np.int8:
            scale, zero_point = self.output["quantization"]
            value = (value.astype(np.float32) - zero_point) * scale
        if value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        return np.array(value, dtype=np.float32)

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            for given in self.inputs:
                self.interpreter.resize_tensor_input(given["index"], [batch, *given["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.inputs, self.output = self.interpreter.get_input_details(), self.interpreter.get_output_details()[0]
            self.input = self.inputs[0]
            self.batch = batch

    def run(self, samples: np.ndarray, batch: int = BATCH) -> np.ndarray:
        outputs = []
        try:
            for start in range(0, len(samples), batch):
                chunk = samples[start : start + batch]
                self._resize(len(chunk))
                self._set_inputs(chunk)
                self.interpreter.invoke()
                outputs.append(self._fetch())
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(f"the TFLite interpreter failed: {str(exc).splitlines()[0]}", "run with --debug for details") from exc
        return np.concatenate(outputs)

    def probe(self, what: str) -> None:
        """One run on zeros: a damaged file that the interpreter loads but cannot run is refused
        here, as bad input, rather than later as a runtime failure."""
        try:
            self.run(np.zeros((1, *self.sample_shape), np.float32))
        except RuntimeFailure as exc:
            raise InputError(f"{what} loads but does not run: {exc.message}", "check that it is a valid, complete .tflite file") from exc

    def run_one(self, sample: np.ndarray) -> None:
        self._resize(1)
        self._set_inputs(sample)
        self.interpreter.invoke()


SMOKE = """
import sys
import numpy as np
from edgetune.evaluate.tflite_runtime import TfliteRunner
runner = TfliteRunner(sys.stdin.buffer.read())
for given in runner.inputs:
    runner.interpreter.set_tensor(given["index"], np.zeros(list(given["shape"]), given["dtype"]))
runner.interpreter.invoke()
print("ok")
"""


class SmokeRun:
    """Load and run a model once in a child process, so that an interpreter crash becomes an
    error, not the death of edgetune. It runs while the caller goes on; :meth:`wait` checks it."""

    def __init__(self, model: bytes, name: str, timeout: float = 120.0) -> None:
        self.name, self.timeout = name, timeout
        self.process = subprocess.Popen(
            [sys.executable, "-c", SMOKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdin is not None
        self.process.stdin.write(model)
        self.process.stdin.close()

    def wait(self) -> None:
        try:
            self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise RuntimeFailure(
                f"the TFLite smoke run of {self.name} did not finish in {self.timeout:.0f} s", "report this as a bug"
            ) from None
        assert self.process.stderr is not None and self.process.stdout is not None
        stderr = self.process.stderr.read().decode(errors="replace")
        self.process.stdout.close()
        self.process.stderr.close()
        if self.process.returncode != 0:
            code = self.process.returncode
            how = f"died of signal {-code}" if code < 0 else "failed"
            detail = (stderr.strip().splitlines() or [""])[-1]
            raise RuntimeFailure(f"the TFLite interpreter {how} on {self.name}: {detail}", "report this as a bug with the model")
