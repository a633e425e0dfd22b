"""A seeded, bounded fuzz of every reading command: damaged .onnx, .tflite, .npz, .safetensors,
.edgetune, .pt2, TOML and JSON files give one line and exit 2, or a documented success.

The cases run in one child process (tests/fuzz_worker.py), so that the imports are paid once
and a native crash is caught here and named rather than taking the test session down.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

SEED = 20261203
PER_FORMAT = 40


def test_damaged_files_give_one_line_and_exit_2_or_a_documented_success(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("fuzz_worker.py")
    done = subprocess.run(
        [sys.executable, str(worker), str(tmp_path), "--seed", str(SEED), "--per-format", str(PER_FORMAT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    started = [line["start"] for line in lines if "start" in line]
    assert done.returncode == 0 and lines[-1] == {"done": True}, (
        f"the worker died in case {started[-1] if started else None}: {done.stderr[-2000:]}"
    )
    cases = [line for line in lines if "code" in line]
    assert len(cases) >= 300
    failures = []
    for case in cases:
        err = case["stderr"].strip().splitlines()
        if case["code"] == 0 or (case["code"] == 1 and case["argv"][0] == "gate"):  # a gate that fails its budgets
            ok = case["stdout_json"] and "Traceback" not in case["stderr"]  # with --json, stdout is one document
        else:
            ok = case["code"] == 2 and len(err) == 1 and err[0].startswith("error: ") and "; " in err[0] and case["stdout"] == ""
        if not ok:
            failures.append(f"{case['kind']} {case['damage']} {case['argv'][0]}: exit {case['code']}, {case['stderr'][-300:]!r}")
    assert not failures, "\n".join(failures[:20])
    codes = collections.Counter(case["code"] for case in cases)
    assert codes[2] > len(cases) / 2, f"most damage is noticed: {codes}"
