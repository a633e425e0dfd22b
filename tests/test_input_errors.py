"""The bad inputs of the reliability review: each gives one stderr line and exit 2, and nothing written."""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgetune.cli.main import run

MODEL = "edgetune.zoo:digits_cnn"
# A data module whose callables misbehave in each way a user's code can.
DATA_CODE = """
import sys
import time
import numpy as np

def forever():
    while True:
        yield np.zeros((8, 1, 8, 8), np.float32)

def blocks():
    yield np.zeros((8, 1, 8, 8), np.float32)
    time.sleep(3600)

def raises():
    yield np.zeros((8, 1, 8, 8), np.float32)
    raise ValueError("the camera is unplugged")

def exits():
    sys.exit(3)

def model_exits():
    sys.exit(3)
"""


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data to speak of)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    (folder / "empty.npz").write_bytes(b"")
    np.savez(folder / "labels_high.npz", x=x, y=np.full(64, 12, np.int64))
    np.savez(folder / "labels_negative.npz", x=x, y=np.full(64, -1, np.int64))
    np.savez(folder / "complex.npz", x=x.astype(np.complex64))
    huge = x.copy()
    huge[0, 0, 0, 0] = 1e30
    np.savez(folder / "outlier.npz", x=huge)
    np.savez(folder / "overflow.npz", x=x.astype(np.float64) * 1e300)
    (folder / "data.py").write_text(DATA_CODE)
    bomb = folder / "bomb" / "cat"
    bomb.mkdir(parents=True)
    (bomb / "big.png").write_bytes(_png(20_000, 20_000))
    (folder / "negative.toml").write_text("[preprocess]\nresize = -5\ncrop = 8\n")
    images = folder / "images" / "a"
    images.mkdir(parents=True)
    from PIL import Image

    Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(images / "one.png")
    out = folder / "compressed"
    assert run(["compress", MODEL, "--calib", "digits", "-o", str(out), "--quiet"]) == 0
    blob = (out / "model.tflite").read_bytes()
    (folder / "tail.tflite").write_bytes(blob[:-2000] + b"\0" * 2000)
    middle = len(blob) // 2
    (folder / "middle.tflite").write_bytes(blob[: middle - 1000] + b"\0" * 2000 + blob[middle + 1000 :])
    (folder / "truncated.tflite").write_bytes(blob[: len(blob) // 3])
    (folder / "truncated.onnx").write_bytes((out / "model.onnx").read_bytes()[:3000])
    return {p.name: p for p in folder.iterdir()} | {"model.onnx": out / "model.onnx", "model.edgetune": out / "model.edgetune"}


Argv = Callable[[dict[str, Path]], list[str]]
FINETUNE = ["--finetune", "3steps", "--quiet"]
CASES: list[tuple[str, Argv, str]] = [
    ("empty-npz-compress", lambda f: ["compress", MODEL, "--calib", str(f["empty.npz"])], "cannot read"),
    ("empty-npz-eval", lambda f: ["eval", str(f["model.onnx"]), "--data", str(f["empty.npz"])], "cannot read"),
    ("labels-high-eval", lambda f: ["eval", str(f["model.onnx"]), "--data", str(f["labels_high.npz"])], "run from 12 to 12"),
    ("labels-negative-eval", lambda f: ["eval", str(f["model.onnx"]), "--data", str(f["labels_negative.npz"])], "run from -1 to -1"),
    ("labels-high-compress-eval", lambda f: ["compress", MODEL, "--calib", "digits", "--eval", str(f["labels_high.npz"])], "10 outputs"),
    (
        "labels-high-finetune",
        lambda f: ["finetune", str(f["model.edgetune"]), "--train", str(f["labels_high.npz"]), *FINETUNE],
        "training labels",
    ),
    ("nan-ptq-budget", lambda f: ["compress", MODEL, "--calib", "digits", "--ptq-budget", "nan"], "not a finite number"),
    ("inf-ptq-budget", lambda f: ["compress", MODEL, "--calib", "digits", "--ptq-budget", "inf"], "not a finite number"),
    ("nan-percentile", lambda f: ["compress", MODEL, "--calib", "digits", "--percentile", "nan"], "not a finite number"),
    ("nan-timeout", lambda f: ["bench", str(f["model.onnx"]), "--timeout", "nan"], "not a finite number"),
    ("nan-finetune-lr", lambda f: ["finetune", str(f["model.edgetune"]), "--train", "digits", "--finetune-lr", "nan", *FINETUNE], "finite"),
    ("nan-temperature", lambda f: ["finetune", str(f["model.edgetune"]), "--train", "digits", "--temperature", "nan", *FINETUNE], "finite"),
    (
        "inf-checkpoint-every",
        lambda f: ["finetune", str(f["model.edgetune"]), "--train", "digits", "--checkpoint-every", "inf", *FINETUNE],
        "finite",
    ),
    ("nan-prune-ratio", lambda f: ["compress", MODEL, "--calib", "digits", "--prune", "channel:nan"], "--prune ratio"),
    ("nan-augment", lambda f: ["finetune", str(f["model.edgetune"]), "--train", "digits", "--augment", "noise:nan", *FINETUNE], "finite"),
    ("complex-data", lambda f: ["compress", MODEL, "--calib", str(f["complex.npz"])], "complex64"),
    ("outlier-data", lambda f: ["compress", MODEL, "--calib", str(f["outlier.npz"])], "reaches 1e+30"),
    ("overflowing-data", lambda f: ["compress", MODEL, "--calib", str(f["overflow.npz"])], "infinite"),
    ("callable-raises", lambda f: ["compress", MODEL, "--calib", f"{f['data.py']}:raises"], "the camera is unplugged"),
    ("callable-exits", lambda f: ["compress", MODEL, "--calib", f"{f['data.py']}:exits"], "sys.exit(3)"),
    ("model-exits", lambda f: ["compress", f"{f['data.py']}:model_exits", "--calib", "digits"], "sys.exit(3)"),
    ("decompression-bomb", lambda f: ["compress", MODEL, "--calib", str(f["bomb"]), "--preprocess", "digits"], "too large to decode"),
    ("negative-resize", lambda f: ["compress", MODEL, "--calib", str(f["images"]), "--preprocess", str(f["negative.toml"])], "resize -5"),
    ("inspect-zeroed-tail", lambda f: ["inspect", str(f["tail.tflite"])], "does not run"),
    ("eval-zeroed-tail", lambda f: ["eval", str(f["tail.tflite"]), "--data", "digits:test"], "does not run"),
    ("inspect-zeroed-middle", lambda f: ["inspect", str(f["middle.tflite"])], "tflite"),
    ("eval-zeroed-middle", lambda f: ["eval", str(f["middle.tflite"]), "--data", "digits:test"], "tflite"),
    ("inspect-truncated-tflite", lambda f: ["inspect", str(f["truncated.tflite"])], "tflite"),
    ("eval-truncated-tflite", lambda f: ["eval", str(f["truncated.tflite"]), "--data", "digits:test"], "tflite"),
    ("inspect-truncated-onnx", lambda f: ["inspect", str(f["truncated.onnx"])], "onnx"),
    ("eval-truncated-onnx", lambda f: ["eval", str(f["truncated.onnx"]), "--data", "digits:test"], "onnx"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_input_gives_one_line_and_exit_2(
    files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str], argv: Argv, fragment: str
) -> None:
    args = argv(files)
    out = tmp_path / "out"
    if args[0] in ("compress", "finetune"):
        args += ["-o", str(out)] + (["--quiet"] if "--quiet" not in args else [])
    code = run([*args, "--json"])
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "; " in lines[0] and "internal error" not in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    assert captured.out == "" and "Traceback" not in captured.err
    assert not out.exists(), "no output folder, not even an empty one"


def test_a_generator_that_never_ends_is_read_up_to_the_sample_cap(files: dict[str, Path]) -> None:
    from edgetune.data import load_dataset
    from edgetune.data.sources import CallableLimits

    data = load_dataset(f"{files['data.py']}:forever", "calibration", limits=CallableLimits(max_samples=100))
    assert len(data) == 100 and "first 100 samples" in data.source


def test_a_generator_that_blocks_fails_at_the_time_cap(files: dict[str, Path]) -> None:
    from edgetune.data import load_dataset
    from edgetune.data.sources import CallableLimits
    from edgetune.errors import InputError

    started = time.monotonic()
    with pytest.raises(InputError, match="did not finish within 1 s"):
        load_dataset(f"{files['data.py']}:blocks", "calibration", limits=CallableLimits(max_seconds=1.0))
    assert time.monotonic() - started < 10


def test_the_cli_reads_an_endless_generator_and_shows_progress(
    files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", MODEL, "--calib", f"{files['data.py']}:forever", "--formats", "onnx", "-o", str(tmp_path / "o")]
    assert run(argv) == 0
    err = capfd.readouterr().err
    assert f"reading {files['data.py']}:forever" in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "first 20000 samples" in report["quantization"]["calibration"]["source"]


def test_a_baseline_without_measurements_is_refused(files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "edgetune.toml").write_text("[targets.host]\nmin_accuracy = 0.5\n")
    (tmp_path / "baseline.json").write_text(json.dumps({"schema": "edgetune.baseline", "version": 1}))
    report = files["model.onnx"].parent / "report.json"
    argv = ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(report), "--baseline", str(tmp_path / "baseline.json")]
    assert run([*argv, "--quiet"]) == 2
    assert "holds no measurements" in capfd.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_gate_budget_is_a_config_error(
    files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str], value: str
) -> None:
    (tmp_path / "edgetune.toml").write_text(f"[targets.host]\nmax_latency_p50_ms = {value}\n")
    report = files["model.onnx"].parent / "report.json"
    assert run(["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(report), "--quiet"]) == 2
    assert "max_latency_p50_ms to a value that is not a finite number" in capfd.readouterr().err


def test_json_documents_never_hold_nan() -> None:
    from edgetune.artifacts import json_text

    text = json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert "NaN" not in text and "Infinity" not in text
