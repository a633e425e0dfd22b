"""No model or data file runs code: a corpus of gadgets through every command that loads a file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
from gadgets import file_gadgets, pt2_gadgets

from edgetune.cli.main import run

# Gadgets that torch.export.load itself runs: proof that the corpus is live, not a strawman.
LIVE_UNDER_TORCH = ("sample-inputs", "pickled-weight", "opaque-constant", "sympy-expression")
# Refused outright, each with the part named in the message.
REFUSED = {
    "sample-inputs": "sample inputs",
    "pickled-weight": "tensor stem.0.weight is pickled",
    "opaque-constant": "pickled object",
    "legacy-weights": "legacy layout",
    "compiled-library": "compiled code",
    "sympy-expression": "symbolic expression",
    "foreign-target": "torch.os.system",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("gadgets")
    marker = folder / "MARKER"
    return {**pt2_gadgets(folder, marker), **file_gadgets(folder, marker)}, marker


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compressed") / "out"
    assert run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--formats", "onnx", "-o", str(out), "--quiet"]) == 0
    return out


def _one_line(capfd: pytest.CaptureFixture[str]) -> str:
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name", LIVE_UNDER_TORCH)
def test_the_pt2_gadgets_do_run_under_torch_export_load(corpus: tuple[dict[str, Path], Path], name: str) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.export.load(str(files[name]))
        except Exception:
            pass  # most fail after the payload has run
    assert marker.exists(), f"{name}: the gadget should be live under torch's own loader"
    marker.unlink()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_compress_refuses_every_pt2_gadget_without_running_it(
    corpus: tuple[dict[str, Path], Path], tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    assert run(["compress", str(files[name]), "--calib", "digits", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    line = _one_line(capfd)
    assert REFUSED[name] in line and "could run code" in line, line
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_finetune_refuses_every_pt2_gadget_as_teacher(
    corpus: tuple[dict[str, Path], Path], compressed: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    argv = ["finetune", str(compressed / "model.edgetune"), "--train", "digits:train", "--teacher", str(files[name])]
    assert run([*argv, "--finetune", "3steps", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert REFUSED[name] in _one_line(capfd)
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_guards_code_in_a_pt2_is_never_compiled(corpus: tuple[dict[str, Path], Path], tmp_path: Path) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    assert run(["compress", str(files["guards-code"]), "--calib", "digits", "--formats", "onnx", "-o", str(tmp_path / "o"), "--quiet"]) == 0
    assert not marker.exists() and (tmp_path / "o" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("name", "argv", "fragment"),
    [
        (
            "weights.pt",
            lambda f, c: ["compress", "edgetune.zoo.digits:digits_cnn", "--weights", f, "--calib", "digits"],
            "cannot read weights",
        ),
        (
            "weights.pth",
            lambda f, c: ["compress", "edgetune.zoo.digits:digits_cnn", "--weights", f, "--calib", "digits"],
            "cannot read weights",
        ),
        (
            "checkpoint.pth",
            lambda f, c: ["compress", "edgetune.zoo.digits:digits_cnn", "--weights", f, "--calib", "digits"],
            "cannot read weights",
        ),
        (
            "weights.pt",
            lambda f, c: ["finetune", c, "--train", "digits:train", "--teacher", "edgetune.zoo.digits:digits_cnn", "--teacher-weights", f],
            "cannot read weights",
        ),
        ("objects.npz", lambda f, c: ["compress", "edgetune.zoo:digits_cnn", "--calib", f], "cannot read"),
        ("objects.npz", lambda f, c: ["eval", str(Path(c).parent / "model.onnx"), "--data", f], "cannot read"),
        ("objects.npz", lambda f, c: ["finetune", c, "--train", f], "cannot read"),
    ],
    ids=["compress-pt", "compress-pth", "compress-checkpoint", "finetune-teacher-weights", "compress-npz", "eval-npz", "finetune-npz"],
)
def test_no_pickle_runs_from_weights_checkpoints_or_data(  # type: ignore[no-untyped-def]
    corpus, compressed: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str, argv, fragment: str
) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    args = argv(str(files[name]), str(compressed / "model.edgetune"))
    if args[0] in ("compress", "finetune"):
        args += ["-o", str(tmp_path / "o"), "--finetune", "3steps"] if args[0] == "finetune" else ["-o", str(tmp_path / "o")]
    assert run([*args, "--quiet"] if args[0] != "eval" else args) == 2
    assert fragment in _one_line(capfd)
    assert not marker.exists()


def test_resume_refuses_a_pickled_checkpoint_without_running_it(
    corpus: tuple[dict[str, Path], Path], compressed: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    files, marker = corpus
    marker.unlink(missing_ok=True)
    out = tmp_path / "o"
    out.mkdir()
    (out / "finetune.ckpt").write_bytes(files["finetune.ckpt"].read_bytes())
    argv = ["finetune", str(compressed / "model.edgetune"), "--train", "digits:train", "--finetune", "3steps", "--resume", "-o", str(out)]
    assert run([*argv, "--quiet"]) == 2
    assert "not a readable fine-tune checkpoint" in _one_line(capfd)
    assert not marker.exists()


def test_a_plain_pt2_still_loads_with_its_sample_inputs(tmp_path: Path) -> None:
    from gadgets import exported

    from edgetune.capture.pt2 import load_pt2

    program = load_pt2(exported(tmp_path / "m.pt2", dynamic=True))
    assert program.example_inputs is not None and program.example_inputs[0][0].shape == (2, 1, 8, 8)
    assert len(program.state_dict) > 10


@pytest.mark.parametrize(
    "expression",
    [
        "Symbol('s0', integer=True, positive=True)",
        "Mul(Integer(2), Symbol('s1', integer=True, positive=True))",
        "FloorDiv(Add(Symbol('s0', integer=True), Integer(-1)), Integer(2))",
        "Max(Integer(1), Symbol('s2', integer=True))",
        "Rational(1, 2) * Symbol('u0') ** 2",
    ],
)
def test_symbolic_expressions_torch_writes_are_accepted(expression: str) -> None:
    from edgetune.capture.pt2 import check_expression

    check_expression(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "Symbol('s0').__class__",
        "Symbol('s0') + open('x', 'w')",
        "Symbol('a.b')",
        "[Symbol('s0')][0]",
        "lambda: 0",
        "Symbol('s0', integer=True) if True else 0",
        "eval('1')",
        "sympify('1')",
    ],
)
def test_symbolic_expressions_that_reach_python_are_refused(expression: str) -> None:
    from edgetune.capture.pt2 import _Refused, check_expression

    with pytest.raises(_Refused):
        check_expression(expression)


def test_the_weights_only_loader_is_what_reads_a_pt_file(tmp_path: Path) -> None:
    """A state dict of plain tensors still loads through the same path the gadgets are refused by."""
    from edgetune.capture.models import load_weights
    from edgetune.zoo.digits import digits_cnn

    buffer = io.BytesIO()
    model = digits_cnn()
    torch.save(model.state_dict(), buffer)
    (tmp_path / "w.pt").write_bytes(buffer.getvalue())
    target = digits_cnn()
    load_weights(target, tmp_path / "w.pt")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), model.state_dict().values()))
