"""The pipeline as an ordered list of typed stages: what runs, what each reports, and a new
stage plugged in without touching the others."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgetune.cli.main import run as cli
from edgetune.pipeline import STAGES, Plan, Run, run
from edgetune.targets import load_target

PACKAGE = Path(__file__).parents[1] / "edgetune"


def test_the_stages_run_in_their_one_order() -> None:
    names = [stage.name for stage in STAGES]
    assert names == [
        *("load", "capture", "meta-init", "prune", "finetune", "adapt", "calibrate"),
        *("finetune (QAT)", "adapt (int8)", "sensitivity", "export", "evaluate"),
    ]


@dataclass(frozen=True)
class Counted:
    quantized: int

    def to_dict(self) -> dict[str, Any]:
        return {"quantized_tensors": self.quantized}


class CountQuantized:
    """A stage from outside the pipeline: it reads the run's state and reports on it."""

    name = "count"

    def wanted(self, state: Run) -> bool:
        return state.graph is not None

    def __call__(self, state: Run) -> Counted:
        graph = state.need_graph()
        return Counted(sum(1 for t in graph.tensors.values() if t.quant is not None))


def test_a_new_stage_plugs_in_and_the_report_times_and_measures_every_stage(tmp_path: Path) -> None:
    plan = Plan("edgetune.zoo:digits_cnn", calib="digits", target=load_target("host"))
    at = [stage.name for stage in STAGES].index("calibrate") + 1
    stages = (*STAGES[:at], CountQuantized(), *STAGES[at:])
    with_stage = run(plan, tmp_path / "with", stages=stages)
    without = run(plan, tmp_path / "without")
    records = with_stage.report["stages"]
    assert [r["name"] for r in records] == ["load", "capture", "calibrate", "count", "export", "evaluate"]
    assert all(r["seconds"] >= 0 and r["peak_rss_bytes"] > 0 for r in records)
    assert list(with_stage.report["timings_s"]) == [*(r["name"] for r in records), "total"]
    assert without.report["model"]["quantized_tensors"] > 0
    for name in ("model.onnx", "model.tflite", "model.edgetune"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes(), name


def test_finetune_writes_a_recipe_that_replays_it_byte_for_byte(tmp_path: Path) -> None:
    assert (
        cli(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--prune", "channel:0.5", "-o", str(tmp_path / "c"), "--quiet"])
        == 0
    )
    argv = ["finetune", str(tmp_path / "c" / "model.edgetune"), "--train", "digits:train", "--finetune", "20steps"]
    assert cli([*argv, "--teacher", "edgetune.zoo:digits_cnn", "-o", str(tmp_path / "f"), "--quiet"]) == 0
    assert cli(["compress", "--recipe", str(tmp_path / "f" / "recipe.toml"), "-o", str(tmp_path / "g"), "--quiet"]) == 0
    for name in ("model.onnx", "model.tflite", "model.edgetune", "recipe.toml"):
        assert (tmp_path / "f" / name).read_bytes() == (tmp_path / "g" / name).read_bytes(), name
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["command"] == "finetune" and [r["name"] for r in report["stages"]] == ["load", "finetune (QAT)", "export", "evaluate"]


def _functions() -> list[tuple[str, int]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                found.append((f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_functions_stay_short_and_the_run_stays_readable() -> None:
    long = [f"{name} ({lines} lines)" for name, lines in _functions() if lines > 60]
    assert not long, "functions over 60 lines: " + ", ".join(long)
    (run_lines,) = [lines for name, lines in _functions() if name.startswith("pipeline/compress.py") and name.endswith(" run")]
    assert run_lines <= 40


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[quantize]\nsamples = 0\n", "line 2: quantize.samples must be in [1, inf), not 0"),
        ("[finetune]\nbudget = '9 parsecs'\n", "line 2: finetune.budget is '9 parsecs'"),
        ("[export]\nformats = ['onnx', 'coreml']\n", "line 2: export.formats must list some of onnx, tflite"),
        ("[prune]\nlayers = { conv2d_1 = 1.5 }\n", "line 2: prune.layers gives conv2d_1 the ratio 1.5"),
        ("[quantize]\nptq = 'best,adaround'\n", "line 2: quantize.ptq 'best,adaround' mixes best or none with other words"),
    ],
)
def test_a_value_out_of_range_names_the_file_line_and_key(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    assert cli(["recipe", "check", str(recipe)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {recipe}, ") and fragment in err[0], err


def test_a_recipe_table_in_pyproject_or_edgetune_toml_is_a_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.edgetune.recipe.quantize]\nmethod = 'minmax'\n")
    (tmp_path / "edgetune.toml").write_text(
        "[gate]\nrepetitions = 3\n[recipe.quantize]\nsamples = 16\n[recipe.export]\nformats = ['onnx']\n"
    )
    for name, key, value in (("pyproject.toml", "method", "minmax"), ("edgetune.toml", "samples", 16)):
        assert cli(["recipe", "show", "--recipe", str(tmp_path / name), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["recipe"][f"quantize.{key}"] == value, name
    (tmp_path / "edgetune.toml").write_text("[recipe.quantize]\nsamples = -1\n")
    assert cli(["recipe", "check", str(tmp_path / "edgetune.toml")]) == 2
    assert "edgetune.toml, line 2: quantize.samples must be in [1, inf)" in capsys.readouterr().err
