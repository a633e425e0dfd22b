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
