from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# The capture cache of this test session: fresh each run, so that no test reads an entry an
# earlier run left, and shared by the session's compress runs (and the CLI processes they start).
if "EDGETUNE_CAPTURE_CACHE" not in os.environ:
    os.environ["EDGETUNE_CAPTURE_CACHE"] = tempfile.mkdtemp(prefix="edgetune-capture-")
    atexit.register(shutil.rmtree, os.environ["EDGETUNE_CAPTURE_CACHE"], True)

# Two cores in CI: keep torch from oversubscribing them when ORT runs in the same process.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN compressed once for the whole session, through the Python API."""
    from edgetune.pipeline import compress

    out = tmp_path_factory.mktemp("digits")
    compress("edgetune.zoo:digits_cnn", "digits", out, eval_data="digits:test")
    return out


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN compressed once through the CLI, without evaluation data (bench tests)."""
    from edgetune.cli.main import run

    out = tmp_path_factory.mktemp("artifacts")
    assert run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(out), "--quiet"]) == 0
    return out


def bench_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """``edgetune bench ARGV --json --quiet``: exit code, the document (on success), stderr."""
    from edgetune.cli.main import run

    code = run(["bench", *argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err.strip()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
