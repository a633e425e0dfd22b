from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two cores in CI: keep torch from oversubscribing them when ORT runs in the same process.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN compressed once for the whole session, through the Python API."""
    from edgetune.pipeline import compress

    out = tmp_path_factory.mktemp("digits")
    compress("edgetune.zoo:digits_cnn", "digits", out, eval_data="digits:test")
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
