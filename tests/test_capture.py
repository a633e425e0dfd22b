from __future__ import annotations

import pytest
import torch

from edgetune import zoo
from edgetune.capture import capture
from edgetune.ir.torch_exec import GraphRunner

ZOO = list(zoo.ZOO)


@pytest.fixture(scope="module", params=ZOO)
def captured(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, object, tuple[int, ...]]:
    entry = zoo.ZOO[request.param]
    model = entry.build()
    return model, capture(model, entry.input_shape), entry.input_shape


def test_ir_runs_like_the_module(captured: tuple) -> None:  # type: ignore[type-arg]
    model, graph, shape = captured
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), GraphRunner(graph)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_batchnorm_pad_and_activations_are_folded(captured: tuple) -> None:  # type: ignore[type-arg]
    _, graph, _ = captured
    ops = {node.op for node in graph.nodes}
    assert "batch_norm" not in ops
    assert not any(node.op == "pad" and len(graph.tensors[node.inputs[0]].shape) == 4 for node in graph.nodes), "pads fold into convs"
    assert not ops & {"relu", "relu6"}, "every ReLU in the zoo follows a conv, linear or add"
    assert all(len(node.inputs) == 3 for node in graph.nodes if node.op == "conv2d"), "folded convs carry a bias"


def test_same_padding_becomes_asymmetric_conv_padding() -> None:
    graph = capture(zoo.efficientnet_lite0(), (3, 224, 224))
    stem = graph.nodes[0]
    assert stem.op == "conv2d" and stem.attrs["pads"] == [0, 0, 1, 1] and stem.attrs["stride"] == [2, 2]


def test_unsupported_ops_are_reported_together() -> None:
    from edgetune.errors import UnsupportedOpsError

    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erf(x) + torch.cumprod(x, dim=1)

    with pytest.raises(UnsupportedOpsError) as info:
        capture(Odd(), (4,))
    assert any("erf" in op for op in info.value.ops) and any("cumprod" in op for op in info.value.ops)
