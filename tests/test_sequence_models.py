"""1-D convolutions and recurrent layers: how they are lowered, named and refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune import zoo
from edgetune.capture import capture
from edgetune.errors import InputError
from edgetune.ir.torch_exec import GraphRunner, run_batches


def test_a_1d_chain_runs_as_one_2d_chain_with_batchnorm_folded() -> None:
    """Reshapes between 1-D layers cancel: only the input's and the head's remain."""
    entry = zoo.ZOO["audio_conv1d"]
    model = entry.build()
    graph = capture(model, entry.input_shape)
    ops = [node.op for node in graph.nodes]
    assert ops.count("reshape") == 2 and "batch_norm" not in ops
    assert all(len(graph.tensors[node.outputs[0]].shape) == 4 for node in graph.nodes if node.op in ("conv2d", "add", "maxpool2d"))
    assert {node.name for node in graph.nodes if node.op == "conv2d"} >= {"stem.0", "blocks.0.conv1", "blocks.3.conv2"}
    x = np.random.default_rng(0).standard_normal((3, *entry.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_batches(GraphRunner(graph), x), expected, rtol=1e-4, atol=1e-4)


def test_recurrent_steps_are_named_after_the_layer_and_share_one_weight() -> None:
    entry = zoo.ZOO["gru_kws"]
    graph = capture(entry.build(), entry.input_shape)
    linears = [node for node in graph.nodes if node.op == "linear"]
    assert {"gru.l0t0_gx", "gru.l1t48_gh", "classifier"} <= {node.name for node in linears}
    weights = {node.inputs[1] for node in linears}
    assert len(weights) == 5, "W_ih and W_hh of two layers, and the classifier's"
    assert len({node.inputs[2] for node in linears}) == len(linears), "a bias per step"
    assert not any(node.name.endswith("_y") for node in graph.nodes), "the unread output sequence is dropped"


class _WithState(nn.Module):
    def __init__(self, **options: object) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, **options)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gru.batch_first:
            return self.gru(x)[0]
        h0 = torch.zeros(1, x.shape[0], 5) + 0.5
        return self.gru(x, h0)[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"batch_first": False}, "a GRU with batch_first=False"), ({"batch_first": True}, "a GRU given an initial state")],
)
def test_recurrent_layers_refuse_what_they_cannot_unroll(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        capture(_WithState(**options).eval(), (6, 4))


def test_linear_over_a_map_is_refused_with_the_way_out() -> None:
    with pytest.raises(InputError, match="a linear layer on a rank-4 tensor"):
        capture(nn.Sequential(nn.Linear(4, 3)).eval(), (2, 6, 4))


def test_a_permute_of_the_batch_axis_is_refused_unless_indexed_at_once() -> None:
    with pytest.raises(InputError, match="moves the batch axis"):
        capture(_Permuted().eval(), (6, 4))


class _Permuted(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 0, 2) * 2.0


def test_the_report_names_the_ops_computed_in_float_and_why(tmp_path: Path) -> None:
    import edgetune

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = edgetune.compress("edgetune.zoo:tiny_vit", str(calib), str(tmp_path / "out"))
    floats = {entry["op"]: entry for entry in result.report["quantization"]["float_ops"]}
    assert set(floats) == {"layer_norm", "gelu"}
    assert len(floats["layer_norm"]["layers"]) == 7 and floats["layer_norm"]["files"] == "both"
    assert "no LayerNorm operator" in floats["layer_norm"]["why"]


def test_the_fallback_switches_every_step_that_shares_a_weight() -> None:
    from edgetune.export.tflite import write_tflite
    from edgetune.quantize import QuantConfig, calibrate
    from edgetune.quantize.fallback import Precision

    graph = capture(_LastStep().eval(), (6, 4))
    calibrate(graph, np.random.default_rng(0).standard_normal((16, 6, 4)).astype(np.float32), QuantConfig(samples=16))
    precision = Precision(graph, "float")
    precision.set({"gru.l0t5_gx"})
    steps = [node for node in graph.nodes if node.op == "linear" and node.name.endswith("_gx")]  # they read W_ih
    assert all(node.attrs.get("precision") == "float" for node in steps), "one weight, one precision"
    write_tflite(graph)  # every step's weight is float: the writer accepts it


class _LastStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0][:, -1]
