"""The artifacts on tflite-runtime 2.14 with numpy 1.26, the runtime a Raspberry Pi image has.

tflite-runtime 2.14 was built against numpy 1.x and fails under numpy 2, so it lives in its
own small environment (made by `make test`: .venv-tflite214), named by EDGETUNE_TFLITE214.
It does not delegate int8 to XNNPACK: these tests check results, not speed.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetune import zoo
from edgetune.capture import capture
from edgetune.data import load_dataset
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.export.tflite import write_tflite
from edgetune.quantize import QuantConfig, calibrate
from edgetune.quantize.fallback import Precision

PYTHON = os.environ.get("EDGETUNE_TFLITE214")
RUNNER = Path(__file__).with_name("tflite214_run.py")

if not PYTHON:
    if os.environ.get("CI"):
        raise RuntimeError("EDGETUNE_TFLITE214 is not set in CI: run the tests through `make test`")
    pytest.skip("tflite-runtime 2.14 environment not set up (EDGETUNE_TFLITE214); `make test` creates it", allow_module_level=True)


def _graphs() -> dict[str, tuple[object, np.ndarray]]:
    graphs = {}
    for name in ("digits_cnn", "resnet8", "ds_cnn"):
        entry = zoo.ZOO[name]
        graph = capture(entry.build(), entry.input_shape)
        if name == "digits_cnn":
            calib, x = load_dataset("digits", "calibration").x[:128], load_dataset("digits", "test").x[:64]
        else:
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((32, *entry.input_shape)).astype(np.float32)
            x = rng.standard_normal((16, *entry.input_shape)).astype(np.float32)
        calibrate(graph, calib, QuantConfig(samples=len(calib)))
        graphs[name] = (graph, x)
    return graphs


def test_artifacts_run_the_same_on_tflite_runtime_214(tmp_path: Path) -> None:
    for name, (graph, x) in _graphs().items():
        variants = {
            f"{name}.int8.tflite": write_tflite(graph),  # type: ignore[arg-type]
            f"{name}.int8io.tflite": write_tflite(graph, int8_io=True),  # type: ignore[arg-type]
            f"{name}.fp32.tflite": write_tflite(graph, quantized=False),  # type: ignore[arg-type]
            # --mode float16 and dynamic-int8 (hybrid kernels quantize each input per inference)
            f"{name}.float16.tflite": write_tflite(graph, quantized=False, weights="float16"),  # type: ignore[arg-type]
            f"{name}.dynamic.tflite": write_tflite(graph, quantized=False, weights="dynamic-int8"),  # type: ignore[arg-type]
        }
        if name == "digits_cnn":  # every layer 16x8: int16 conv, depthwise and linear, and int8 <-> int16 at the adds
            wide = copy.deepcopy(graph)
            Precision(wide, "int16").set({n.name for n in wide.nodes if n.op in ("conv2d", "linear")})  # type: ignore[attr-defined]
            variants[f"{name}.16x8.tflite"] = write_tflite(wide)  # type: ignore[arg-type]
        for file_name, blob in variants.items():
            (tmp_path / file_name).write_bytes(blob)
        np.savez(tmp_path / f"{name}-x.npz", x=x.transpose(0, 2, 3, 1))
        done = subprocess.run(
            [
                PYTHON,
                str(RUNNER),
                str(tmp_path / f"{name}-x.npz"),
                str(tmp_path / f"{name}-out.npz"),
                *(str(tmp_path / f) for f in variants),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        theirs = np.load(tmp_path / f"{name}-out.npz")
        scale = float(graph.tensors[graph.outputs[0]].quant.scale[0])  # type: ignore[attr-defined]
        for file_name, blob in variants.items():
            ours = TfliteRunner(blob).run(x)
            if "fp32" in file_name or "float16" in file_name:
                np.testing.assert_allclose(theirs[file_name], ours, rtol=1e-4, atol=1e-4)
            elif "dynamic" in file_name:  # the runtimes' hybrid kernels round each input their own way
                noise = np.sum((theirs[file_name] - ours) ** 2) / np.sum(ours**2)
                assert 10 * np.log10(1 / max(noise, 1e-12)) > 25, f"{file_name}: tflite-runtime 2.14 and LiteRT disagree"
                assert np.mean(ours.argmax(1) == theirs[file_name].argmax(1)) >= (0.97 if name == "digits_cnn" else 0.8)
            else:
                lsb = np.abs(theirs[file_name] - ours) / scale
                assert lsb.max() <= 1.0 + 1e-3, f"{file_name}: {lsb.max():.1f} LSB between tflite-runtime 2.14 and LiteRT"
                if name == "digits_cnn":  # real data: top-1 must agree (random inputs tie too often to ask)
                    theirs_top = theirs[file_name].argmax(1)
                    # a flip is allowed only between two classes within 1 LSB of each other
                    margin = ours.max(1) - ours[np.arange(len(ours)), theirs_top]
                    assert np.all((ours.argmax(1) == theirs_top) | (margin <= scale + 1e-6)), file_name
                    assert np.mean(ours.argmax(1) == theirs_top) >= (0.98 if "16x8" in file_name else 0.99)


def _on_214(folder: Path, blob: bytes, ids: np.ndarray) -> np.ndarray:
    """The outputs of a token-id model (``blob``) on tflite-runtime 2.14."""
    (folder / "model.int8.tflite").write_bytes(blob)
    np.savez(folder / "ids.npz", x=ids)
    done = subprocess.run(
        [PYTHON, str(RUNNER), str(folder / "ids.npz"), str(folder / "out.npz"), str(folder / "model.int8.tflite")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return np.asarray(np.load(folder / "out.npz")["model.int8.tflite"])


def test_a_token_model_runs_the_same_on_tflite_runtime_214(tmp_path: Path) -> None:
    """GATHER of int8 rows at int32 ids, as a Raspberry Pi's runtime runs it."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(8 * 6, 3)).eval()
    graph = capture(model, (6,), "int64")
    rng = np.random.default_rng(0)
    calibrate(graph, rng.integers(0, 50, (32, 6)), QuantConfig(samples=32))
    x = rng.integers(0, 50, (16, 6))
    blob = write_tflite(graph)
    scale = float(graph.tensors[graph.outputs[0]].quant.scale[0])  # type: ignore[union-attr]
    lsb = np.abs(_on_214(tmp_path, blob, x) - TfliteRunner(blob).run(x)) / scale
    assert lsb.max() <= 1.0 + 1e-3


def test_a_transformer_encoder_with_its_float_stream_runs_the_same_on_tflite_runtime_214(tmp_path: Path) -> None:
    """The float stream and the outlier split (quantize/stream.py): float LayerNorm, GELU,
    softmax and additions between int8 FULLY_CONNECTED and BATCH_MATMUL, with the split's
    float GATHER, CONCATENATION and MUL around QUANTIZE and DEQUANTIZE."""
    from test_stream import calibrated, ids, outlier_encoder

    from edgetune.evaluate.metrics import cosines, sqnr_db

    graph = calibrated(outlier_encoder())
    assert graph.meta["stream"]["split"]["input_channels_added"] > 0  # type: ignore[attr-defined]
    x = ids(16, 5)
    blob = write_tflite(graph)  # type: ignore[arg-type]
    theirs, ours = _on_214(tmp_path, blob, x), TfliteRunner(blob).run(x)
    # The planted outliers make the model chaotic (int8 is 22 dB from fp32): a rounding step
    # apart between the two runtimes' kernels grows, but stays far below the int8 error.
    assert sqnr_db(ours, theirs) > 30 and cosines(ours, theirs).mean() > 0.9995


def test_a_bert_with_mask_and_token_types_runs_the_same_on_tflite_runtime_214(tmp_path: Path) -> None:
    """Three int32 inputs, the mask's CAST and float bias, a float DIV of the masked mean."""
    from test_several_inputs import NAMES, _batch
    from text_encoder import bert

    from edgetune.evaluate.metrics import cosines

    graph = capture(bert(), (16,), "int64", NAMES)
    calibrate(graph, _batch(64, 0), QuantConfig())
    x = _batch(16, 1)
    blob = write_tflite(graph)
    theirs, ours = _on_214(tmp_path, blob, x), TfliteRunner(blob).run(x)
    assert cosines(ours, theirs).min() > 0.9999 and np.abs(ours - theirs).max() < 1e-2
