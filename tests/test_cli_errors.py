"""Bad input: exactly one stderr line 'error: <what>; <what to do>', exit code 2, nothing written."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetune.cli.main import run

MODEL = "edgetune.zoo:digits_cnn"


@functools.cache
def _digits_onnx() -> bytes:
    from edgetune import zoo
    from edgetune.capture import capture
    from edgetune.export.onnx import write_onnx

    return write_onnx(capture(zoo.digits_cnn(), (1, 8, 8)), quantized=False)


def _files(tmp: Path) -> dict[str, Path]:
    np.savez(tmp / "nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32))
    np.savez(tmp / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(tmp / "nox.npz", images=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp / "wrongshape.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    (tmp / "corrupt.onnx").write_bytes(b"this is not protobuf")
    (tmp / "corrupt.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64)
    (tmp / "corrupt.pt2").write_bytes(b"PK-not-a-zip")
    (tmp / "notmodule.py").write_text("def make():\n    return 42\n")
    (tmp / "broken.py").write_text("raise ImportError('no such thing')\n")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp / "wrong.pt")
    (tmp / "garbage.safetensors").write_bytes(b"\x00" * 16)
    (tmp / "digits.onnx").write_bytes(_digits_onnx())
    return {p.name: p for p in tmp.iterdir()}


CASES = [
    # id, argv builder (files -> argv), expected code, expected fragment of the single line
    ("missing-model", lambda f: ["compress", "nope/model.onnx", "--calib", "digits"], 2, "does not exist"),
    ("corrupt-onnx", lambda f: ["compress", str(f["corrupt.onnx"]), "--calib", "digits"], 2, "corrupt.onnx"),
    ("corrupt-pt2", lambda f: ["compress", str(f["corrupt.pt2"]), "--calib", "digits"], 2, "torch.export"),
    ("callable-not-module", lambda f: ["compress", f"{f['notmodule.py']}:make", "--calib", "digits"], 2, "not a torch.nn.Module"),
    ("callable-missing", lambda f: ["compress", f"{f['notmodule.py']}:nothing", "--calib", "digits"], 2, "has no attribute"),
    ("import-fails", lambda f: ["compress", f"{f['broken.py']}:make", "--calib", "digits"], 2, "importing"),
    ("module-missing", lambda f: ["compress", "no_such_pkg.models:net", "--calib", "digits"], 2, "cannot import module"),
    ("weights-mismatch", lambda f: ["compress", MODEL, "--weights", str(f["wrong.pt"]), "--calib", "digits"], 2, "does not fit the model"),
    (
        "weights-garbage",
        lambda f: ["compress", MODEL, "--weights", str(f["garbage.safetensors"]), "--calib", "digits"],
        2,
        "cannot read weights",
    ),
    (
        "wrong-input-shape",
        lambda f: ["compress", MODEL, "--calib", str(f["wrongshape.npz"])],
        2,
        "have shape 3x8x8 but the model takes 1x8x8",
    ),
    ("bad-input-shape-flag", lambda f: ["compress", MODEL, "--calib", "digits", "--input-shape", "1xAx8"], 2, "input shape"),
    ("nan-data", lambda f: ["compress", MODEL, "--calib", str(f["nan.npz"])], 2, "NaN"),
    (
        "onnx-wrong-input-shape",
        lambda f: ["compress", str(f["digits.onnx"]), "--calib", str(f["wrongshape.npz"])],
        2,
        "but the model takes 1x8x8",
    ),
    ("empty-data", lambda f: ["compress", MODEL, "--calib", str(f["empty.npz"])], 2, "is empty"),
    ("npz-without-x", lambda f: ["compress", MODEL, "--calib", str(f["nox.npz"])], 2, "the model takes x, which calibration data"),
    ("missing-data", lambda f: ["compress", MODEL, "--calib", "nowhere.npz"], 2, "nowhere.npz"),
    ("unknown-target", lambda f: ["compress", MODEL, "--calib", "digits", "--target", "toaster"], 2, "unknown target 'toaster'"),
    ("unknown-method", lambda f: ["compress", MODEL, "--calib", "digits", "--method", "magic"], 2, "magic"),
    ("unknown-option", lambda f: ["compress", MODEL, "--calib", "digits", "--frobnicate"], 2, "--frobnicate"),
    ("eval-missing-artifact", lambda f: ["eval", "none.onnx", "--data", "digits"], 2, "does not exist"),
    ("bench-corrupt", lambda f: ["bench", str(f["corrupt.onnx"])], 2, "cannot load"),
    ("targets-unknown", lambda f: ["targets", "show", "toaster"], 2, "unknown target"),
    ("inspect-corrupt-tflite", lambda f: ["inspect", str(f["corrupt.tflite"])], 2, "rejects the model"),
    ("eval-corrupt-tflite", lambda f: ["eval", str(f["corrupt.tflite"]), "--data", "digits"], 2, "rejects the model"),
    (
        "export-not-compressed",
        lambda f: ["export", str(f["corrupt.onnx"]), "-o", str(f["corrupt.onnx"].parent / "x")],
        2,
        "not an edgetune compressed model",
    ),
    (
        "unknown-format",
        lambda f: ["compress", MODEL, "--calib", "digits", "--formats", "onnx,coreml"],
        2,
        "unknown export format(s) coreml",
    ),
]


@pytest.mark.parametrize(("argv", "code", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str], argv, code: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    files = _files(tmp_path)
    out = tmp_path / "out"
    args = argv(files)
    if args[0] == "compress":
        args += ["-o", str(out), "--quiet"]
    assert run(args) == code
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "; " in lines[0], lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists(), "nothing half-written, not even an empty folder"


def test_no_traceback_or_warnings_without_debug_in_a_real_process(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.full((2, 1, 8, 8), np.nan, np.float32))
    argv = [sys.executable, "-m", "edgetune", "compress", MODEL, "--calib", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "o")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
