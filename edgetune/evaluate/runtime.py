"""ONNX Runtime sessions for artifacts edgetune wrote or was given."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from edgetune.errors import InputError, RuntimeFailure
from edgetune.targets import usable_cores

# Samples per session run when evaluating: outputs do not depend on it (each sample is computed
# alone), and 8 EfficientNet-Lite0 images at 224 run 10-15% faster than 32 (their activations
# stay in cache, and the arena a first run allocates is a quarter as large).
BATCH = 8


def session_options(threads: int | None = None, spin: bool = True):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is None and usable_cores() < (os.cpu_count() or 1):
        threads = usable_cores()  # pinned to fewer cores than the machine has: no more threads than those
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRunner:
    """One ORT session over an ONNX model given as bytes or a path."""

    def __init__(self, model: bytes | Path, threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        try:
            # ORT prints its provider fallback notes to stdout, which belongs to --json documents.
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(source, session_options(threads, spin), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types, all deriving from Exception
            where = "the model" if isinstance(model, bytes) else str(model)
            raise InputError(
                f"ONNX Runtime cannot load {where}: {str(exc).splitlines()[0]}", "check that it is a valid ONNX model"
            ) from exc
        inputs = self.session.get_inputs()
        kinds = {(i.type, tuple(i.shape)) for i in inputs}
        if len(kinds) != 1:
            raise InputError(
                f"the ONNX model's {len(inputs)} inputs differ in type or shape",
                "edgetune evaluates models whose inputs share one shape and type (token ids, attention mask, token types)",
            )
        self.input_names = [i.name for i in inputs]
        self.input_name = inputs[0].name
        self.input_dtype = np.int64 if inputs[0].type == "tensor(int64)" else np.float32  # token ids, or values
        self.input_shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
        self.runtime = f"onnxruntime {ort.__version__}"

    @property
    def sample_shape(self) -> list[int]:
        """The per-sample input shape (unknown dimensions as 1); several inputs are stacked on axis 0."""
        return self._stacked + [1 if d is None else d for d in self.input_shape[1:]]

    @property
    def _stacked(self) -> list[int]:
        """A sample's leading axis over several inputs (data.Dataset), else none."""
        return [len(self.input_names)] if len(self.input_names) > 1 else []

    def feeds(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """One batch as the session's inputs: several are stacked on axis 1 (data.Dataset)."""
        return feeds(self.input_names, samples, self.input_dtype)

    def check_samples(self, samples: np.ndarray, source: str) -> None:
        stacked = self._stacked
        expected = [*stacked, *self.input_shape[1:]]
        got = list(samples.shape[1:])
        if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
            shown = "x".join("?" if e is None else str(e) for e in expected)
            what = f" ({', '.join(self.input_names)} stacked on axis 1)" if stacked else ""
            raise InputError(
                f"samples of {source} have shape {'x'.join(map(str, got))} but the model takes {shown}{what}",
                "give data preprocessed to the model's input shape" + (", one array per input name in an .npz" if stacked else ""),
            )

    def run(self, samples: np.ndarray, batch: int = BATCH) -> np.ndarray:
        outputs = []
        try:
            for start in range(0, len(samples), batch):
                outputs.append(self.session.run(None, self.feeds(samples[start : start + batch]))[0])
        except Exception as exc:
            raise RuntimeFailure(
                f"ONNX Runtime failed to run the model: {str(exc).splitlines()[0]}", "run with --debug for details"
            ) from exc
        return np.concatenate(outputs)

    def run_one(self, sample: np.ndarray) -> None:
        self.session.run(None, self.feeds(sample))


def feeds(names: list[str], samples: np.ndarray, dtype: type | None = None) -> dict[str, np.ndarray]:
    """A batch as a session's inputs: ``samples`` for one; ``samples[:, i]`` for input ``i`` of several."""
    if len(names) == 1:
        return {names[0]: np.ascontiguousarray(samples, dtype=dtype)}
    return {name: np.ascontiguousarray(samples[:, i], dtype=dtype) for i, name in enumerate(names)}
