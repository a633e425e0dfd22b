"""Issue 22: the capture cache (same artifacts, never a stale or foreign entry, a broken cache
never stops a compress), the profile of a run, and commands that start without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune import zoo
from edgetune.capture import cache as capture_cache
from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.ir.graph import Graph

ARTIFACTS = ("model.onnx", "model.fp32.onnx", "model.tflite", "model.edgetune")


def _same_graph(a: Graph, b: Graph) -> None:
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.meta == b.meta
    assert [(n.op, n.name, n.inputs, n.outputs) for n in a.nodes] == [(n.op, n.name, n.inputs, n.outputs) for n in b.nodes]
    for x, y in zip(a.nodes, b.nodes):
        assert x.attrs == y.attrs and [type(v) for v in x.attrs.values()] == [type(v) for v in y.attrs.values()], x.name
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert t.shape == u.shape and type(t.shape) is type(u.shape)
        assert (t.data is None) == (u.data is None)
        if t.data is not None:
            assert t.data.dtype == u.data.dtype and np.array_equal(t.data, u.data), name


@pytest.mark.parametrize("name", ["digits_cnn", "mobilenet_v3_small", "tiny_detector", "ds_cnn", "gru_kws", "audio_conv1d", "tiny_vit"])
def test_a_cached_capture_is_the_captured_graph(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = getattr(zoo, name, None)
    if build is None:
        pytest.skip(f"no zoo model {name}")
    model = build()
    shape = tuple(getattr(model, "input_shape", (1, 8, 8)))
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", "off")
    fresh = capture(model, shape)
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))
    stored = capture(model, shape)  # captured again, and stored
    assert len(list(tmp_path.glob("*.edgetune"))) == 1
    cached = capture(model, shape)  # read back
    _same_graph(fresh, stored)
    _same_graph(fresh, cached)


def test_the_key_follows_weights_attributes_shape_and_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    model = zoo.digits_cnn()
    key = capture_cache.capture_key(model, (1, 8, 8))
    assert capture_cache.capture_key(model, (1, 8, 8)) == key
    assert capture_cache.capture_key(model, (1, 16, 16)) != key
    other = zoo.digits_cnn()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert capture_cache.capture_key(other, (1, 8, 8)) != key
    changed = zoo.digits_cnn()
    changed.extra_setting = 2  # a plain attribute forward() might read
    assert capture_cache.capture_key(changed, (1, 8, 8)) != key
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert capture_cache.capture_key(model, (1, 8, 8)) != key


def test_a_model_defined_where_no_file_holds_it_is_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))
    namespace: dict[str, object] = {"nn": nn, "__name__": "__main__"}
    exec("class Net(nn.Module):\n    def forward(self, x):\n        return x * 2\n", namespace)  # a notebook's class
    net = namespace["Net"]()  # type: ignore[operator]
    monkeypatch.setattr(sys.modules["__main__"], "__file__", None, raising=False)
    capture(net, (4,))
    assert not list(tmp_path.glob("*.edgetune"))


def _compress(out: Path, *extra: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    argv = [sys.executable, "-m", "edgetune", "compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(out), "--quiet"]
    done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=300)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return done.returncode, done.stderr, report


def _steps(report: dict) -> list[str]:  # type: ignore[type-arg]
    capture_stage = next(s for s in report["profile"]["stages"] if s["name"] == "capture")
    return [s["name"] for s in capture_stage.get("steps", [])]


def test_a_warm_compress_skips_torch_export_and_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", "off")
    code, err, plain = _compress(tmp_path / "plain")
    assert code == 0, err
    assert "torch.export" in _steps(plain) and not (tmp_path / "cache").exists()
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path / "cache"))
    code, err, cold = _compress(tmp_path / "cold")
    assert code == 0, err
    assert "torch.export" in _steps(cold) and "capture cache write" in _steps(cold)
    code, err, warm = _compress(tmp_path / "warm")
    assert code == 0 and err == "", err
    assert "capture cache read" in _steps(warm) and "torch.export" not in _steps(warm)
    for name in ARTIFACTS:
        blob = (tmp_path / "plain" / name).read_bytes()
        assert (tmp_path / "cold" / name).read_bytes() == blob, name
        assert (tmp_path / "warm" / name).read_bytes() == blob, name


def test_an_entry_from_another_torch_or_edgetune_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))
    model = zoo.digits_cnn()
    capture(model, (1, 8, 8))
    entry = next(tmp_path.glob("*.edgetune"))
    graph, written_by = capture_cache.graph_from_cache_bytes(entry.read_bytes())
    graph.nodes[0].attrs["poisoned"] = True  # were the entry used, the graph would show it
    monkeypatch.setattr(capture_cache, "versions", lambda: {**written_by, "torch": "9.9.9"})
    entry.write_bytes(capture_cache.graph_bytes(graph))  # same key, written by "another torch"
    monkeypatch.undo()
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))
    again = capture(model, (1, 8, 8))
    assert "poisoned" not in again.nodes[0].attrs


def test_a_damaged_entry_is_said_once_and_the_compress_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(cache))
    code, err, _ = _compress(tmp_path / "first")
    assert code == 0, err
    entry = next(cache.glob("*.edgetune"))
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short
    code, err, report = _compress(tmp_path / "second")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: the capture cache entry") and "damaged" in lines[0], err
    assert "torch.export" in _steps(report)
    assert (tmp_path / "second" / "model.tflite").read_bytes() == (tmp_path / "first" / "model.tflite").read_bytes()


def test_an_unwritable_cache_is_said_once_and_the_compress_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(blocker / "capture"))
    code, err, report = _compress(tmp_path / "out")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: the capture cache") and "cannot be written" in lines[0], err
    assert report["artifacts"]


def test_the_cache_keeps_the_most_recent_entries_within_its_limit(tmp_path: Path) -> None:
    for index in range(4):
        path = tmp_path / f"{index}.edgetune"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + index, 1000 + index))
    capture_cache._evict(tmp_path, 250)
    assert sorted(p.name for p in tmp_path.glob("*.edgetune")) == ["2.edgetune", "3.edgetune"]


def test_profile_prints_where_the_time_went(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "-o", str(tmp_path / "out"), "--quiet", "--profile", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)  # stdout stays one JSON document
    profile = report["profile"]
    assert profile["process"]["imports"] >= 0
    stages = {s["name"]: s for s in profile["stages"]}
    assert list(stages) == [s["name"] for s in report["stages"]]
    calibrate = {s["name"]: s for s in stages["calibrate"]["steps"]}
    assert {"calibration", "bias correction"} <= calibrate.keys()
    observe = next(s for s in calibrate["calibration"]["steps"] if s["name"] == "observe")
    assert any(s["name"] == "onnxruntime runs" and s["calls"] >= 1 for s in observe["steps"])
    for stage in stages.values():
        assert sum(s["seconds"] for s in stage.get("steps", [])) <= stage["seconds"] + 1e-3
    table = captured.err
    for row in ("imports and options", "calibrate", "  bias correction", "    observe", "report and publish", "wall"):
        assert f"\n{row}" in table, row


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["inspect", "{tflite}"],
        ["targets", "list"],
        ["recipe", "keys"],
        ["gate", "--help"],
        ["eval", "{tflite}", "--data", "digits:test"],
    ]
    + [["bench", "{tflite}", "--runs", "3", "--warmup", "1", "--quiet"], ["recipe", "show", "{recipe}"]],
)
def test_light_commands_never_import_torch(argv: list[str], artifacts: Path) -> None:
    paths = {"tflite": str(artifacts / "model.tflite"), "recipe": str(artifacts / "recipe.toml")}
    args = [a.format(**paths) for a in argv]
    script = (
        "import sys\nfrom edgetune.cli.main import run\ncode = run(sys.argv[1:])\n"
        "print('torch' in sys.modules, file=sys.stderr)\nsys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False", f"edgetune {' '.join(args)} imported torch"


class Wrap(nn.Module):
    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)  # type: ignore[operator]


def test_the_key_follows_the_code_a_module_holds() -> None:
    """Two wrappers of different lambdas print alike and have no weights: the code tells them apart."""
    keys = {
        capture_cache.capture_key(Wrap(fn), (4, 3, 3))
        for fn in (lambda x: x[:, 1:3] * 2.0, lambda x: x[:, 1:3] * 3.0, lambda x: x[:, 0:3] * 2.0, torch.sigmoid, torch.relu)
    }
    assert len(keys) == 5
    closures = [capture_cache.capture_key(Wrap((lambda s: lambda x: x * s)(v)), (4,)) for v in (2.0, 3.0)]
    assert closures[0] != closures[1], "the same code with another value in its closure"


def test_a_module_holding_what_the_key_cannot_describe_is_captured_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))

    class Settings:  # a user object: its state is unknown to the key
        factor = 2.0

    net = Wrap(lambda x: x * 2.0)
    net.settings = Settings()
    capture(net, (4,))
    assert not list(tmp_path.glob("*.edgetune"))
    capture(Wrap(lambda x: x * 2.0), (4,))
    assert len(list(tmp_path.glob("*.edgetune"))) == 1


@pytest.mark.parametrize("signed", [True, False])
def test_the_no_grad_fake_quantizer_is_torchs_bit_for_bit(signed: bool) -> None:
    from edgetune.ir.graph import QParams
    from edgetune.ir.torch_exec import fake_quant

    rng = np.random.default_rng(3)
    qmin, qmax = (-128, 127) if signed else (0, 255)
    for trial in range(40):
        scale = float(np.float32(2.0 ** rng.integers(-8, 3) if trial % 3 == 0 else 10 ** rng.uniform(-5, 1)))
        zero_point = int(rng.integers(qmin, qmax + 1))
        q = QParams(np.array([scale], np.float32), np.array([zero_point], np.int64), "int8" if signed else "uint8")
        spread = scale * rng.uniform(1, 300)
        ties = (rng.integers(-300, 300, size=500) + 0.5) * scale  # halfway between two steps
        x = np.concatenate([rng.normal(size=20_000) * spread, ties, [0.0, -0.0, 1e6 * scale, -1e6 * scale, np.inf, -np.inf]]).astype(
            np.float32
        )
        if trial % 2:
            x[rng.integers(len(x))] = np.nan  # torch's kernel gives qmin: the steps hand it over
        tensor = torch.from_numpy(x)
        expected = torch.fake_quantize_per_tensor_affine(tensor, scale, zero_point, qmin, qmax)
        with torch.no_grad():
            got = fake_quant(tensor, q)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), (scale, zero_point)


def test_a_data_callable_loads_in_the_main_thread_within_its_time_limit(tmp_path: Path) -> None:
    """Files and bundled sets load beside the model's build; a callable does not, since its
    time limit is a SIGALRM timer that only the main thread gets."""
    from edgetune.pipeline import compress

    data = tmp_path / "calib_data.py"
    data.write_text(
        "import threading\nimport numpy as np\n"
        f"SEEN = {str(tmp_path / 'thread.txt')!r}\n"
        "def batches():\n"
        "    open(SEEN, 'w').write(str(threading.current_thread() is threading.main_thread()))\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(4):\n"
        "        yield rng.normal(size=(32, 1, 8, 8)).astype(np.float32)\n"
    )
    compress("edgetune.zoo:digits_cnn", f"{data}:batches", tmp_path / "out", export=None)
    assert (tmp_path / "thread.txt").read_text() == "True"


def test_heavy_commands_start_over_with_malloc_huge_pages_and_give_children_the_users_environment(tmp_path: Path) -> None:
    """The console entry execs itself once with glibc's THP tunable (where the kernel is in
    madvise mode): the report says so, and the code the run executes (here a data callable,
    as the benchmark agents and smoke runs would) sees the GLIBC_TUNABLES the user gave."""
    from edgetune.cli import launch

    data = tmp_path / "calib_data.py"
    seen = tmp_path / "seen.json"
    data.write_text(
        "import json, os\nimport numpy as np\n"
        "def batches():\n"
        f"    json.dump({{k: os.environ.get(k) for k in ('GLIBC_TUNABLES', {launch.ORIGINAL!r})}}, open({str(seen)!r}, 'w'))\n"
        "    yield np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)\n"
    )
    possible = launch._glibc_at_least(2, 35) and launch._thp_mode() == "madvise"
    for switch, expected in (("on", possible), ("off", False)):
        out = tmp_path / f"out-{switch}"
        env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.arena_max=4", launch.SWITCH: switch, "EDGETUNE_CAPTURE_CACHE": "off"}
        argv = [sys.executable, "-m", "edgetune", "compress", "edgetune.zoo:digits_cnn", "--calib", f"{data}:batches", "-o", str(out)]
        done = subprocess.run([*argv, "--quiet", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["profile"]["process"]["huge_pages"] is expected, switch
        assert json.loads(seen.read_text()) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", launch.ORIGINAL: None}


@pytest.mark.parametrize(
    ("argv", "env", "wanted"),
    [
        (["edgetune", "compress", "m.py:net"], {}, True),
        (["edgetune", "search", "--help"], {}, False),
        (["edgetune", "inspect", "model.tflite"], {}, False),
        (["edgetune", "bench", "model.tflite"], {}, False),  # latency is measured as a user's process would run
        (["edgetune"], {}, False),
        (["edgetune", "eval", "model.onnx"], {"EDGETUNE_HUGE_PAGES": "off"}, False),
        (["edgetune", "gate"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, False),  # the user chose already
    ],
)
def test_only_heavy_commands_start_over(argv: list[str], env: dict[str, str], wanted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.cli import launch

    monkeypatch.setattr(launch, "_glibc_at_least", lambda major, minor: True)
    monkeypatch.setattr(launch, "_thp_mode", lambda: "madvise")
    assert launch.wants_huge_pages(argv, env) is wanted
    monkeypatch.setattr(launch, "_thp_mode", lambda: "always")  # every process has them already
    assert launch.wants_huge_pages(argv, env) is False


def _state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(model.state_dict().items())


def test_a_zoo_models_settled_batchnorm_comes_back_from_the_cache_as_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetune.zoo import settled

    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", "off")
    fresh = zoo.mobilenet_v3_small()
    monkeypatch.setenv("EDGETUNE_CAPTURE_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(zoo, "settle_batchnorm", lambda *a, **k: calls.append(1) or _settle(*a, **k))
    stored, cached = zoo.mobilenet_v3_small(), zoo.mobilenet_v3_small()
    assert len(calls) == 1 and len(list(tmp_path.glob("zoo-*.safetensors"))) == 1  # settled once, then read
    shape = tuple(fresh.input_shape)
    for model in (stored, cached):
        assert [n for n, _ in _state(model)] == [n for n, _ in _state(fresh)]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(_state(model), _state(fresh)))
        assert not model.training and capture_cache.capture_key(model, shape) == capture_cache.capture_key(fresh, shape)
    entry = next(tmp_path.glob("zoo-*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:1000])  # damaged: settled again, said once
    again = zoo.mobilenet_v3_small()
    assert len(calls) == 2 and all(torch.equal(a, b) for (_, a), (_, b) in zip(_state(again), _state(fresh)))
    assert capsys.readouterr().err.count("is damaged") == 1
    before = settled.settled_key(_initial(), shape, 0)
    monkeypatch.setattr(torch, "__version__", "0.0.1")  # another torch: another key, never the old entry
    assert settled.settled_key(_initial(), shape, 0) != before
    zoo.mobilenet_v3_small()
    assert len(calls) == 3 and len(list(tmp_path.glob("zoo-*.safetensors"))) == 2


def _initial() -> nn.Module:
    from edgetune.zoo.mobile import MobileNetV3Small

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MobileNetV3Small()


def _settle(*args: object, **kwargs: object) -> None:
    from edgetune.zoo.layers import settle_batchnorm

    settle_batchnorm(*args, **kwargs)  # type: ignore[arg-type]
