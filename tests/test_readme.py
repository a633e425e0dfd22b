"""The README's Python snippet, run as written on a user's own model file, weights and data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

README = Path(__file__).parents[1] / "README.md"
NET = """
from edgetune.zoo.digits import DigitsCNN

def build():
    return DigitsCNN()
"""


def _snippet() -> str:
    text = README.read_text()
    after = text[text.index("The same from Python:") :]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def test_the_python_snippet_runs_as_written(tmp_path: Path) -> None:
    from edgetune import zoo
    from edgetune.data import load_dataset

    (tmp_path / "your_net.py").write_text(NET)
    save_file({k: v.contiguous() for k, v in zoo.digits_cnn().state_dict().items()}, str(tmp_path / "net.safetensors"))
    calib, test = load_dataset("digits", "calibration"), load_dataset("digits", "test")
    np.savez(tmp_path / "calib.npz", x=calib.x)
    np.savez(tmp_path / "test.npz", x=test.x, y=test.y)
    done = subprocess.run([sys.executable, "-c", _snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    int8_accuracy, evaluated, p50 = (float(line) for line in done.stdout.split())
    assert int8_accuracy > 0.9 and evaluated == int8_accuracy and p50 > 0, "trained weights, loaded: not an untrained model"


def test_compress_notes_a_callable_without_weights(tmp_path: Path) -> None:
    import json

    from edgetune.cli.main import run

    (tmp_path / "your_net.py").write_text(NET)
    argv = ["compress", f"{tmp_path / 'your_net.py'}:build", "--calib", "digits", "-o", str(tmp_path / "out"), "--quiet"]
    assert run(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["weights"] is None and "no weights were given" in report["model"]["note"]


def _tour_script() -> str:
    """The README tour's shell blocks, in order, as one script (without the install line)."""
    text = README.read_text()
    tour = text[text.index("## A five-minute tour") : text.index("The same from Python:")]
    blocks = re.findall(r"```sh\n(.*?)```", tour, re.S)
    lines = [line for block in blocks for line in block.splitlines() if not line.startswith("make install")]
    return "set -e\n" + "\n".join(lines) + "\n"


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    """From the repository's root of a fresh clone: the example model trained, its calib.npz
    and test.npz built, the recipe run, then the commands after it."""
    import json
    import os

    (tmp_path / "examples").symlink_to(README.parent / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", _tour_script()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-1500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "warning" not in done.stderr.lower()
    out = tmp_path / "tour" / "out"
    assert {"model.onnx", "model.tflite", "model_data.cc", "model_data.h", "recipe.toml"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["ptq"]["keep_float"]["layers"] == ["head"]
    assert report["evaluation"]["int8_accuracy"] > 0.9 and report["evaluation"]["fp32_accuracy"] > 0.9
    pruned = json.loads((tmp_path / "tour" / "out-pruned" / "report.json").read_text())
    assert pruned["pruning"]["macs"]["ratio"] < 1 and pruned["evaluation"]["int8_accuracy"] > 0.85, "pruned, then recovered"
