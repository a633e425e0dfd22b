"""Evaluate: accuracy, top-1 agreement and SQNR of artifacts, run on the real runtimes."""

from edgetune.evaluate.metrics import accuracy, agreement, sqnr_db
from edgetune.evaluate.runtime import OnnxRunner

__all__ = ["OnnxRunner", "accuracy", "agreement", "sqnr_db"]
