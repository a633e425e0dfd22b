"""Recipes: one TOML file for every setting, the order in which it meets the options, strict
checking, and replay from an output folder's recipe.toml, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib

from edgetune.cli.main import run

MODEL = "edgetune.zoo:digits_cnn"
EXAMPLES = Path(__file__).parents[1] / "examples" / "recipes"
REPLAYS = {
    "plain": ["--calib", "calib.npz", "--eval", "digits:test", "--formats", "onnx,tflite"],
    "ptq-best": ["--calib", "digits", "--ptq", "best", "--set", "quantize.ptq_budget=4"],
    "pruned-and-recovered": ["--calib", "digits", "--prune", "channel:0.5", "--prune-steps", "2"]
    + ["--finetune", "40steps", "--train", "digits:train", "--qat", "--augment", "shift:1"],
}


@pytest.mark.parametrize("case", sorted(REPLAYS))
def test_an_output_folder_replays_byte_for_byte_from_its_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    from edgetune.data import load_dataset

    np.savez("calib.npz", x=load_dataset("digits", "calibration").x[:200])  # a relative path: the recipe makes it absolute
    assert run(["compress", MODEL, *REPLAYS[case], "-o", "first", "--quiet"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(["compress", "--recipe", str(work / "first" / "recipe.toml"), "-o", "second", "--quiet"]) == 0
    reports = [json.loads((folder / "report.json").read_text()) for folder in (work / "first", elsewhere / "second")]
    # --ptq best holds its budget on the clock: a run the machine slowed (a busy neighbour) cuts
    # AdaRound short, says so, and only then may give other bytes.
    clocks = [r["quantization"]["ptq"].get("adaround", {}).get("clock", {}) for r in reports]
    slowed = [c for c in clocks if c.get("shortened_layers") or c.get("nearest_layers")]
    assert all("depends on the machine" in c["note"] for c in slowed)
    for name in ("recipe.toml",) if slowed else ("model.onnx", "model.tflite", "model.edgetune", "recipe.toml"):
        assert (work / "first" / name).read_bytes() == (elsewhere / "second" / name).read_bytes(), name
    assert "recipe.toml" in reports[1]["artifacts"]


def test_the_recipe_file_then_the_options_then_set(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'version = 1\n[model]\nsource = "edgetune.zoo:digits_cnn"\n[data]\ncalib = "digits"\n'
        '[quantize]\nmethod = "minmax"\nsamples = 64\nptq = "none"\n[export]\nformats = ["onnx"]\n'
    )
    out = tmp_path / "out"
    argv = ["compress", "--recipe", str(recipe), "--method", "percentile", "--set", "quantize.samples=32", "-o", str(out), "--quiet"]
    assert run(argv) == 0
    effective = tomllib.loads((out / "recipe.toml").read_text())
    assert effective["quantize"]["method"] == "percentile", "an option given overrides the file"
    assert effective["quantize"]["samples"] == 32, "--set overrides both"
    assert effective["quantize"]["ptq"] == "none", "the file overrides the defaults"
    assert effective["quantize"]["ptq_budget"] == 60.0, "an option not given keeps the file's (here the default) value"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "recipe.toml"} and not (out / "model.tflite").exists()


BAD = [
    ("syntax", "[quantize\nsamples = 1\n", [], "is not valid TOML"),
    ("unknown-section", "[quantise]\nsamples = 1\n", [], "unknown recipe section [quantise]; did you mean [quantize]?"),
    (
        "unknown-key",
        "[quantize]\nsamples = 8\nptq_budgt = 3\n",
        [],
        "line 3: unknown recipe key quantize.ptq_budgt; did you mean quantize.ptq_budget?",
    ),
    ("wrong-type", "[quantize]\nsamples = 'many'\n", [], "line 2: quantize.samples must be a whole number"),
    ("out-of-range", "[quantize]\nsamples = 0\n", [], "r.toml, line 2: quantize.samples must be in [1, inf), not 0"),
    ("newer-version", "version = 7\n", [], "newer edgetune (recipe version 7)"),
    ("non-finite", "[quantize]\nptq_budget = nan\n", [], "quantize.ptq_budget to a value that is not a finite number"),
    ("set-unknown", "", ["--set", "prune.ratio=0.5"], "--set: unknown recipe key prune.ratio"),
    ("set-wrong-type", "", ["--set", "export.formats=onnx"], "export.formats must be a list of strings"),
]


@pytest.mark.parametrize(("text", "extra", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_recipe_is_one_line_naming_the_key(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], text: str, extra: list[str], fragment: str
) -> None:
    (tmp_path / "r.toml").write_text(text)
    argv = ["compress", MODEL, "--calib", "digits", "--recipe", str(tmp_path / "r.toml"), *extra, "-o", str(tmp_path / "o"), "--quiet"]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_run_without_a_model_says_where_to_give_one(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert run(["compress", "--calib", "digits", "-o", str(tmp_path / "o")]) == 2
    assert "no model.source is given; pass MODEL, or set model.source in the recipe" in capfd.readouterr().err


def test_show_prints_a_recipe_that_loads_back_to_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgetune.recipe import load

    assert run(["recipe", "show", "--set", "prune.layers={ conv2d_3 = 0.25 }", "--set", "prune.protect=['first']"]) == 0
    (tmp_path / "shown.toml").write_text(capsys.readouterr().out)
    recipe = load(tmp_path / "shown.toml")
    assert recipe["prune.layers"] == {"conv2d_3": 0.25} and recipe["prune.protect"] == ["first"]
    assert run(["recipe", "keys", "--json"]) == 0
    names = {row["key"] for row in json.loads(capsys.readouterr().out)["keys"]}
    assert {"quantize.ptq_budget", "prune.method", "finetune.budget", "export.formats"} <= names


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_the_example_recipes_are_valid(example: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "check", str(EXAMPLES / example), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"]


def test_compress_help_fits_on_a_screen(capsys: pytest.CaptureFixture[str]) -> None:
    import click

    from edgetune.cli import compress

    shown = [p for p in compress.command.params if isinstance(p, click.Option) and not p.hidden]
    assert len(shown) + 1 <= 15, [p.name for p in shown]  # and --help
    assert run(["compress", "--help"]) == 0
    assert "edgetune recipe keys" in capsys.readouterr().out


def test_the_python_api_takes_a_recipe(tmp_path: Path) -> None:
    import edgetune
    from edgetune.recipe import Recipe

    recipe = Recipe().updated({"model.source": MODEL, "data.calib": "digits", "export.formats": ["onnx"]}, "test")
    result = edgetune.compress(recipe, out_dir=tmp_path / "a")
    assert (tmp_path / "a" / "recipe.toml").is_file() and result.report["export"]["formats"] == ["onnx"]
    again = edgetune.compress(str(tmp_path / "a" / "recipe.toml"), out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert again.report["model"] == result.report["model"]


def test_the_gate_runs_a_recipe_table_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    gate = (
        '[gate]\nartifacts = ["model.onnx"]\nrepetitions = 3\nrepetition_seconds = 0.1\nalpha = 0.1\n[targets.host]\nmin_accuracy = 0.9\n'
    )
    recipe = '[recipe]\nout = "built"\n[recipe.model]\nsource = "edgetune.zoo:digits_cnn"\n[recipe.data]\ncalib = "digits"\neval = "digits:test"\n'
    Path("edgetune.toml").write_text(recipe + '[recipe.export]\nformats = ["onnx"]\n' + gate)
    assert run(["gate", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] and Path("built/recipe.toml").is_file()
    Path("edgetune.toml").write_text(recipe + "[recipe.quantize]\nptq_budgt = 3\n" + gate)
    assert run(["gate", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe key quantize.ptq_budgt; did you mean quantize.ptq_budget?" in err and err.count("\n") == 1
