"""edgetune: compress PyTorch models for edge devices and prove the result.

The pipeline, one subpackage per stage:

    capture  -> torch.export graph lowered to edgetune's graph IR (``edgetune.ir``)
    quantize -> calibration observers and int8 parameters (TFLite int8 numerics)
    export   -> writers for ONNX (QDQ) from the same quantized graph
    evaluate -> accuracy, agreement and SQNR of artifacts on real runtimes
    profile  -> latency and memory on the host

``edgetune.api`` holds the Python entry points re-exported here. They are imported on
first use so that ``import edgetune`` (and the CLI's light commands) stays fast.
"""

from __future__ import annotations

from typing import Any

from edgetune import timing  # noqa: F401  (first: it notes when edgetune was imported, for --profile)

__version__ = "0.1.0"

_API = ("benchmark", "compress", "evaluate", "inspect_artifact")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from edgetune import api

        # Loading the API imports the edgetune.evaluate package, which Python then binds as this
        # module's ``evaluate``; the API's functions are bound over it, so that edgetune.evaluate
        # is the function from here on (later submodule imports bind to their own packages).
        globals().update({function: getattr(api, function) for function in _API})
        return getattr(api, name)
    raise AttributeError(f"module 'edgetune' has no attribute {name!r}")
