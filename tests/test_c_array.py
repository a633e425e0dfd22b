"""``--c-array``: the TFLite model as a C source and header pair for TFLite Micro, checked with a
real C++ compiler and TFLite Micro's own interpreter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetune.cli.main import run
from edgetune.export.tflite.c_array import resolver_method


def _array_bytes(source: str) -> bytes:
    body = source[source.index("{") + 1 : source.index("};")]
    return bytes(int(byte, 16) for byte in re.findall(r"0x([0-9a-f]{2})", body))


@pytest.fixture(scope="module")
def mcu_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c_array") / "out"
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--calib-samples", "64", "--target", "stm32h7"]
    assert run([*argv, "--c-array", "--quiet", "-o", str(out)]) == 0
    return out


def test_the_array_holds_the_tflite_file_aligned_with_its_size_and_ops(mcu_out: Path) -> None:
    from edgetune.profile.ops import tflite_ops

    source, header = (mcu_out / "model_data.cc").read_text(), (mcu_out / "model_data.h").read_text()
    blob = (mcu_out / "model.tflite").read_bytes()
    assert _array_bytes(source) == blob
    assert "alignas(16) const unsigned char g_model_data[]" in source and f"g_model_data_len = {len(blob)};" in source
    assert f"g_model_data_size = {len(blob)};" in header
    ops = sorted({op.op for op in tflite_ops(blob).ops})
    assert f"// Ops: {', '.join(ops)}." in header
    assert f"MicroMutableOpResolver<{len(ops)}>" in header
    assert all(f"resolver.{resolver_method(op)}();" in header for op in ops)
    recipe = (mcu_out / "recipe.toml").read_text()
    assert "c_array = true" in recipe


def test_the_resolver_names_are_tflite_micros() -> None:
    expected = {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected"}
    expected |= {"AVERAGE_POOL_2D": "AddAveragePool2D", "HARD_SWISH": "AddHardSwish", "RELU6": "AddRelu6", "PADV2": "AddPadV2"}
    expected |= {"BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "L2_POOL_2D": "AddL2Pool2D", "ADD_N": "AddAddN"}
    assert {op: resolver_method(op) for op in expected} == expected


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_the_pair_compiles_and_links(mcu_out: Path, tmp_path: Path) -> None:
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        'int main() { std::printf("%u %u %d\\n", g_model_data_len, g_model_data_size,'
        " (int)(reinterpret_cast<unsigned long>(g_model_data) % 16)); return 0; }\n"
    )
    binary = tmp_path / "check"
    flags = ["-std=c++17", "-Wall", "-Werror", "-I", str(mcu_out)]
    subprocess.run(["g++", *flags, str(main), str(mcu_out / "model_data.cc"), "-o", str(binary)], check=True, capture_output=True)
    size, declared, misalignment = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split()
    assert int(size) == int(declared) == (mcu_out / "model.tflite").stat().st_size and misalignment == "0"


def test_tflite_micro_runs_the_array_as_litert_runs_the_file(mcu_out: Path) -> None:
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from edgetune.data.sources import load_dataset
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    blob = _array_bytes((mcu_out / "model_data.cc").read_text())
    header = (mcu_out / "model_data.h").read_text()
    arena = int(re.search(r"g_model_data_arena_size = (\d+);", header).group(1))  # type: ignore[union-attr]
    planned = int(re.search(r"activations need (\d+) bytes", header).group(1))  # type: ignore[union-attr]
    assert planned < arena
    samples = load_dataset("digits:test", "test").x[:32]
    litert = TfliteRunner(blob).run(samples)
    micro = runtime.Interpreter.from_bytes(blob, arena_size=arena)
    details = micro.get_input_details(0)
    scale, zero = details["quantization_parameters"]["scales"][0], details["quantization_parameters"]["zero_points"][0]
    outputs = []
    for sample in samples:
        q = np.clip(np.round(sample.transpose(1, 2, 0) / scale) + zero, -128, 127).astype(np.int8)[None]
        micro.set_input(q, 0)
        micro.invoke()
        outputs.append(micro.get_output(0)[0])
    assert (np.argmax(np.stack(outputs), 1) == np.argmax(litert, 1)).mean() >= 0.97
    with pytest.raises(RuntimeError):  # the measured arena is the smallest that runs it, to 16 bytes
        small = runtime.Interpreter.from_bytes(blob, arena_size=arena - 64)
        small.set_input(q, 0)
        small.invoke()


def test_c_array_needs_the_tflite_format(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--formats", "onnx", "--c-array", "-o", str(tmp_path / "o")]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--c-array" in err[0] and "add tflite to --formats" in err[0]


def test_export_writes_the_pair_from_a_compressed_model(mcu_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exported"
    assert run(["export", str(mcu_out / "model.edgetune"), "-o", str(out), "--target", "stm32h7", "--c-array", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert {"model_data.cc", "model_data.h", "model.tflite"} <= set(written)
    assert (out / "model_data.cc").read_bytes() == (mcu_out / "model_data.cc").read_bytes()
