"""All-or-nothing outputs: a fault at every write and rename leaves the complete old set or the
complete new set, never a mixed or an empty folder.

Each scenario runs once per fault point k: the k-th call to ``os.rename``, ``os.replace``, the
folder exchange or a file write raises (a full disk, or Ctrl-C), until a run passes every point.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edgetune.artifacts
from edgetune.cli.main import run

MODEL = "edgetune.zoo:digits_cnn"
FAULTS = {
    "disk-full": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "ctrl-c": KeyboardInterrupt,
}


class Injector:
    """Counts the calls of the patched functions and raises at the k-th."""

    def __init__(self, k: int, fault: Callable[[], BaseException]) -> None:
        self.k, self.fault, self.calls = k, fault, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.k:
                raise self.fault()
            return function(*args, **kwargs)

        return patched

    @property
    def fired(self) -> bool:
        return self.calls >= self.k


def _snapshot(folder: Path) -> dict[str, str] | None:
    """File name -> digest, for every file under ``folder`` (None when it does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


Snapshot = dict[str, str] | None


def _sweep(
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[], BaseException],
    argv: list[str],
    out: Path,
    reset: Callable[[], None],
    which: Callable[[Snapshot], str | None],
) -> int:
    """Run ``argv`` with a fault at each point k in turn. After each, ``which`` must recognise the
    state of ``out`` as "old" or "new" (or "none", when there was no folder before); the run
    that meets no fault must end with "new". Returns the number of fault points."""
    k = 1
    while True:
        reset()
        injector = Injector(k, fault)
        with monkeypatch.context() as patch:
            for module, name in ((os, "rename"), (os, "replace"), (edgetune.artifacts, "exchange"), (edgetune.artifacts, "write_new")):
                patch.setattr(module, name, injector.wrap(getattr(module, name)))
            code = run(argv)
        state = _snapshot(out)
        seen = which(state)
        assert seen is not None, f"fault at call {k}: the folder holds neither the old set nor the new one: {state}"
        leftovers = [p.name for p in out.parent.rglob(".*") if not p.name.endswith(".partial")]
        assert not leftovers, f"fault at call {k}: temporary files or folders left behind: {leftovers}"
        if not injector.fired:
            assert code == 0 and seen == "new"
            return k - 1
        assert code != 0, f"fault at call {k} went unreported"
        k += 1


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The old and the new output sets of each command, made once without faults."""
    root = tmp_path_factory.mktemp("sets")
    made: dict[str, Any] = {"root": root}
    compress = ["compress", MODEL, "--calib", "digits", "--formats", "onnx,tflite", "--quiet"]
    for name, extra in (("old", ["--method", "minmax"]), ("new", ["--method", "mse"])):
        assert run([*compress, *extra, "-o", str(root / f"compress-{name}")]) == 0
    made["compress"] = [*compress, "--method", "mse"]
    made["edgetune"] = root / "compress-old" / "model.edgetune"
    finetune = ["finetune", str(made["edgetune"]), "--train", "digits:train", "--finetune", "4steps", "--formats", "onnx", "--quiet"]
    for name, seed in (("old", "1"), ("new", "2")):
        assert run([*finetune, "--seed", seed, "-o", str(root / f"finetune-{name}")]) == 0
    made["finetune"] = [*finetune, "--seed", "2"]
    export = ["export", str(made["edgetune"])]
    assert run([*export, "--formats", "onnx", "-o", str(root / "export-old")]) == 0
    assert run([*export, "--formats", "onnx,tflite", "-o", str(root / "export-new")]) == 0
    made["export"] = [*export, "--formats", "onnx,tflite"]
    return made


def _artifacts(snapshot: Snapshot) -> Snapshot:
    """A set without its report (which carries timings): the artifacts tell which set it is."""
    return None if snapshot is None else {k: v for k, v in snapshot.items() if k != "report.json"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", ["compress", "export", "finetune"])
@pytest.mark.parametrize("existing", [True, False], ids=["over-an-old-set", "into-a-new-folder"])
def test_a_fault_at_any_write_or_rename_leaves_the_old_set_or_the_new_one(
    sets: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, command: str, existing: bool
) -> None:
    out = tmp_path / "out"
    old, new = sets["root"] / f"{command}-old", sets["root"] / f"{command}-new"
    mine = {"mine/notes.txt": hashlib.sha256(b"the user's own file").hexdigest()} if existing else {}
    expected = {"old": {**_artifacts(_snapshot(old)), **mine}, "new": {**_artifacts(_snapshot(new)), **mine}}  # type: ignore[dict-item]

    def reset() -> None:
        shutil.rmtree(out, ignore_errors=True)
        if existing:
            shutil.copytree(old, out)
            (out / "mine").mkdir()
            (out / "mine" / "notes.txt").write_text("the user's own file")

    def which(state: Snapshot) -> str | None:
        if state is None:
            return None if existing else "none"
        if command != "export" and "report.json" not in state:
            return None  # artifacts without their report are a mixed set too
        for name, files in expected.items():
            if _artifacts(state) == files and (name == "new" or existing):
                return name
        return None

    points = _sweep(monkeypatch, FAULTS[fault], [*sets[command], "-o", str(out)], out, reset, which)
    assert points >= 3, "the sweep reached the publishing step"


def test_the_gate_baseline_and_its_artifacts_change_together(sets: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "edgetune.toml").write_text("[targets.host]\nmin_accuracy = 0.5\n")
    baseline = tmp_path / "ci" / "baseline.json"
    figures = {"kind": "measured", "repetition_medians_ms": [0.1] * 9, "repetition_ms": [0.1] * 9, "p90_ms": 0.1}
    update = {}
    for name, p50 in (("old", 0.1), ("new", 0.2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"measurements": {"host": {"model.onnx": {**figures, "p50_ms": p50}}}}))
        report = sets["root"] / f"compress-{name}" / "report.json"
        update[name] = ["gate", "--config", str(tmp_path / "edgetune.toml"), "--report", str(report), "--quiet"]
        update[name] += ["--baseline", str(baseline), "--update-baseline", "--measurements", str(tmp_path / f"{name}.json")]
    assert run(update["old"]) == 0
    saved = tmp_path / "saved"
    shutil.copytree(baseline.parent, saved)
    onnx = {name: (sets["root"] / f"compress-{name}" / "model.onnx").read_bytes() for name in ("old", "new")}

    def reset() -> None:
        shutil.rmtree(baseline.parent)
        shutil.copytree(saved, baseline.parent)

    def which(state: Snapshot) -> str | None:
        """The document names a complete artifacts folder of its own set."""
        document = json.loads(baseline.read_text())
        name = {0.1: "old", 0.2: "new"}.get(document["measurements"]["host"]["model.onnx"]["p50_ms"])
        artifacts = baseline.parent / "baseline.artifacts" / document["artifacts"]
        if name is None or not artifacts.is_dir() or {p.name for p in artifacts.iterdir()} != {"model.onnx", "model.tflite"}:
            return None
        return name if (artifacts / "model.onnx").read_bytes() == onnx[name] else None

    for fault in FAULTS.values():
        points = _sweep(monkeypatch, fault, update["new"], baseline.parent, reset, which)
        assert points >= 3
        assert len(list((baseline.parent / "baseline.artifacts").iterdir())) == 1, "the old artifacts are gone once the new document is in"


def test_outputs_take_the_umask_like_any_file(tmp_path: Path) -> None:
    """0644 files and 0755 folders under umask 022, not the private modes of temporary files."""
    from edgetune.artifacts import publish_folder, write_file

    previous = os.umask(0o022)
    try:
        publish_folder(tmp_path / "out", {"model.onnx": b"x", "report.json": b"{}"})
        write_file(tmp_path / "baseline.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    for path in (tmp_path / "out" / "model.onnx", tmp_path / "out" / "report.json", tmp_path / "baseline.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path
