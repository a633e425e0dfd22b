"""Layers carry the user's module names (``block.conv1``) in the report, the options and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from edgetune.capture import capture
from edgetune.cli.main import run
from edgetune.prune.apply import kept_count

NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return self.relu(x + self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.block = Block(16)
        self.layers = nn.Sequential(Block(16), Block(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.block(self.stem(x)))).flatten(1))
"""


class Twice(nn.Module):
    """One activation module called twice, and an op of the top-level forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Sigmoid()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.act(self.act(self.conv(x)) * 2.0))


def test_captured_nodes_are_named_after_their_modules() -> None:
    namespace: dict[str, object] = {}
    exec(compile(NET, "net.py", "exec"), namespace)  # noqa: S102  (the test's own source)
    graph = capture(namespace["Net"](), (1, 8, 8))  # type: ignore[operator]
    names = [(n.op, n.name) for n in graph.nodes]
    assert ("conv2d", "stem") in names and ("conv2d", "block.conv1") in names and ("conv2d", "layers.1.conv2") in names
    assert ("add", "block.add") in names and ("linear", "fc") in names and ("global_avgpool", "pool") in names
    twice = [(n.op, n.name) for n in capture(Twice(), (1, 8, 8)).nodes]
    assert ("sigmoid", "act") in twice and ("sigmoid", "act#2") in twice and ("linear", "head.1") in twice
    assert len({name for _, name in twice}) == len(twice)


@pytest.fixture()
def net(tmp_path: Path) -> str:
    (tmp_path / "net.py").write_text(NET)
    return f"{tmp_path / 'net.py'}:Net"


def test_options_take_module_names_and_the_report_shows_them(net: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "compress",
        net,
        "--input-shape",
        "1x1x8x8",
        "--calib",
        "digits",
        "--target",
        "stm32h7",
        "--prune",
        "channel:0.5",
        "--quiet",
        "--json",
    ]
    argv += ["--prune-protect", "block", "--prune-layer", "layers.1=0.25", "--keep-float", "layers.0", "-o", str(tmp_path / "out")]
    assert run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {layer: row for row in report["pruning"]["groups"] for layer in row["layers"]}
    assert rows["block.conv1"]["protected"] and rows["block.conv2"]["protected"]  # a module protects all its layers
    assert rows["stem"] is rows["block.conv2"]  # the residual stream is one group
    multiple = report["pruning"]["config"]["channel_multiple"]
    inner = rows["layers.1.conv1"]
    assert inner["after"] == kept_count(inner["before"], 0.25, multiple) != kept_count(inner["before"], 0.5, multiple)
    assert rows["layers.0.conv1"]["after"] == kept_count(rows["layers.0.conv1"]["before"], 0.5, multiple)
    assert report["quantization"]["ptq"]["keep_float"]["layers"] == ["layers.0.conv1", "layers.0.conv2"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--prune-protect", "block.conv3", "--prune-protect: the model has no prunable layer named block.conv3; did you mean block.conv"),
        ("--prune-layer", "layer.1=0.3", "prune.layers: the model has no prunable layer named layer.1; did you mean layers.1?"),
        ("--keep-float", "layers.2", "--keep-float: the model has no layer named layers.2; did you mean layers."),
    ],
)
def test_an_unknown_name_suggests_the_nearest(
    net: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    argv = ["compress", net, "--input-shape", "1x1x8x8", "--calib", "digits", "--target", "stm32h7", "--prune", "channel:0.5", "--quiet"]
    assert run([*argv, option, value, "-o", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_a_recipe_names_modules_with_dotted_keys(net: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TOML reads ``{ layers.1 = 0.25 }`` as a nested table: the recipe takes it as the name."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'version = 1\n[model]\nsource = "{net}"\ninput_shape = "1x1x8x8"\n[prune]\nmethod = "channel:0.5"\nlayers = {{ layers.1 = 0.25 }}\n'
    )
    assert run(["recipe", "show", "--recipe", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["prune.layers"] == {"layers.1": 0.25}


class Suffixes(nn.Module):
    """A module called twice beside a module whose own name ends in _1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.conv_1 = nn.Conv2d(4, 4, 1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.conv_1(self.conv(self.conv(x)))


def test_a_second_call_never_takes_another_modules_name() -> None:
    from edgetune.ir.select import select

    graph = capture(Suffixes(), (4, 3, 3))
    names = [n.name for n in graph.nodes if n.op == "conv2d"]
    assert names == ["conv", "conv#2", "conv_1"]
    assert select(names, ["conv_1"], "--keep-float") == ["conv_1"]
    assert select(names, ["conv"], "--keep-float") == ["conv", "conv#2"], "a module's name picks its every call"


def test_a_layers_own_ratio_beats_its_modules_within_a_group() -> None:
    from edgetune.prune import PruneConfig, prune_channels

    namespace: dict[str, object] = {}
    exec(compile(NET, "net.py", "exec"), namespace)  # noqa: S102  (the test's own source)
    graph = capture(namespace["Net"](), (1, 8, 8))  # type: ignore[operator]
    # the residual stream is one group: stem, block.conv2, layers.0.conv2, layers.1.conv2
    report = prune_channels(graph, PruneConfig(0.0, overrides=(("layers", 0.25), ("layers.1.conv2", 0.5))))
    rows = {layer: row for row in report.groups for layer in row["layers"]}
    assert rows["layers.1.conv2"]["after"] == kept_count(16, 0.5, 1), "the layer's own ratio, not its module's"
    assert rows["layers.0.conv1"]["after"] == kept_count(16, 0.25, 1)
