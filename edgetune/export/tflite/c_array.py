"""A TFLite model as a C++ source and header pair for TensorFlow Lite for Microcontrollers (TFLM):
``model_data.cc`` holds the flatbuffer in a 16-byte aligned array (TFLM reads the model in
place, and its tensors' data must stay aligned), ``model_data.h`` declares it with its size,
the ops it uses, edgetune's arena estimate, and a ``MicroMutableOpResolver`` that registers
exactly those ops.

TFLM's resolver methods are the builtin op names in camel case (``CONV_2D`` ->
``AddConv2D``, ``FULLY_CONNECTED`` -> ``AddFullyConnected``), as in
``tensorflow/lite/micro/micro_mutable_op_resolver.h``.
"""

from __future__ import annotations

import re

from edgetune.errors import InputError

SOURCE = "model_data.cc"
HEADER = "model_data.h"
ALIGNMENT = 16
BYTES_PER_LINE = 12
LARGEST_ARENA = 256 << 20  # the largest arena tried: far beyond any microcontroller


IRREGULAR = {"PADV2": "AddPadV2", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM"}


def resolver_method(op: str) -> str:
    """``DEPTHWISE_CONV_2D`` -> ``AddDepthwiseConv2D``."""
    if op in IRREGULAR:
        return IRREGULAR[op]
    parts = op.split("_")
    return "Add" + "".join(part if re.fullmatch(r"\d+D", part) else part.capitalize() for part in parts)


def model_ops(blob: bytes) -> list[str]:
    """The builtin ops the model's operators use, sorted, each once."""
    from edgetune.profile.ops import tflite_ops

    return sorted({op.op for op in tflite_ops(blob).ops})


def measured_arena(blob: bytes) -> int | None:
    """The smallest tensor arena TFLite Micro's host interpreter runs the model in (bisected,
    to 16 bytes), or None without the ``tflite-micro`` package (``pip install edgetune[micro]``).
    A 64-bit host's bookkeeping is larger than a 32-bit MCU's: an upper bound there."""
    try:
        import numpy as np
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None

    def runs(size: int) -> bool:
        try:
            interpreter = runtime.Interpreter.from_bytes(blob, arena_size=size)
            details = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
            interpreter.invoke()
        except (RuntimeError, ValueError):
            return False
        return True

    from edgetune.evaluate.tflite_runtime import native_logs_silenced

    low, high = 0, max(len(blob), 1 << 16)
    with native_logs_silenced():  # each arena too small is a line on stderr
        if not runs(LARGEST_ARENA):
            return None  # not an arena problem: TFLite Micro cannot run this model
        while not runs(high):
            low, high = high, min(high * 2, LARGEST_ARENA)
        while high - low > 16:
            middle = (low + high) // 2
            low, high = (low, middle) if runs(middle) else (middle, high)
    return high


def c_array(blob: bytes, symbol: str = "g_model_data", planned_bytes: int | None = None) -> dict[str, bytes]:
    """``model_data.cc`` and ``model_data.h`` for ``blob``; ``planned_bytes`` is edgetune's
    activation plan, said beside TFLite Micro's measured arena when that is installed."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", symbol):
        raise InputError(f"{symbol!r} is not a C identifier", "name the array with letters, digits and underscores")
    ops = model_ops(blob)
    arena = _arena_lines(symbol, planned_bytes, measured_arena(blob))
    return {SOURCE: _source(blob, symbol).encode(), HEADER: _header(len(blob), symbol, ops, arena).encode()}


def _arena_lines(symbol: str, planned: int | None, measured: int | None) -> str:
    lines = []
    if planned is not None:
        lines.append(f"// edgetune's memory plan: the activations need {planned} bytes of the tensor arena.")
    if measured is not None:
        lines += [
            f"// TFLite Micro's host interpreter ran the model in a {measured}-byte arena (its bookkeeping",
            "// included; a 32-bit MCU needs a little less). Measure on the board to be sure.",
            f"constexpr unsigned int {symbol}_arena_size = {measured};",
        ]
    elif planned is not None:
        lines.append("// TFLite Micro adds its own bookkeeping to that: size the arena on the board.")
    return "\n".join(lines) + "\n\n" if lines else ""


def _source(blob: bytes, symbol: str) -> str:
    rows = [", ".join(f"0x{byte:02x}" for byte in blob[i : i + BYTES_PER_LINE]) for i in range(0, len(blob), BYTES_PER_LINE)]
    body = ",\n".join(f"    {row}" for row in rows)
    return (
        f"// The TFLite model ({len(blob)} bytes), written by edgetune. Declared in {HEADER}.\n"
        f'#include "{HEADER}"\n\n'
        f"alignas({ALIGNMENT}) const unsigned char {symbol}[] = {{\n{body}\n}};\n"
        f"const unsigned int {symbol}_len = {len(blob)};\n"
    )


def _header(size: int, symbol: str, ops: list[str], arena: str) -> str:
    guard = f"EDGETUNE_{symbol.upper()}_H_"
    methods = "\n".join(f"  resolver.{resolver_method(op)}();  // {op}" for op in ops)
    return (
        f"// The TFLite model as a C array, written by edgetune: {size} bytes, aligned to {ALIGNMENT}.\n"
        f"// Ops: {', '.join(ops)}.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char {symbol}[];\n"
        f"extern const unsigned int {symbol}_len;\n"
        f"constexpr unsigned int {symbol}_size = {size};\n\n"
        f"{arena}"
        f"// The op resolver with exactly the ops this model needs. Include\n"
        f"// tensorflow/lite/micro/micro_mutable_op_resolver.h before this header, then:\n"
        f"//   static auto resolver = edgetune_op_resolver();\n"
        f"#ifdef TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_\n"
        f"inline tflite::MicroMutableOpResolver<{len(ops)}> edgetune_op_resolver() {{\n"
        f"  tflite::MicroMutableOpResolver<{len(ops)}> resolver;\n"
        f"{methods}\n"
        f"  return resolver;\n"
        f"}}\n"
        f"#endif\n\n"
        f"#endif  // {guard}\n"
    )
