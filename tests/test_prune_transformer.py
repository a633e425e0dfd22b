"""Structured pruning of transformer blocks (edgetune/prune/transformer.py): feed-forward
neurons and attention heads found on captured and imported graphs, removed exactly (the
pruned model is the original with those units' output columns zeroed), written to both
formats with smaller layers and fewer heads, and blocks that cannot be followed kept whole."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_text_import import NAMES, _export, _tokens
from text_encoder import bert, bert_classifier

from edgetune.capture import capture
from edgetune.capture.onnx_import import import_onnx
from edgetune.cli.main import run
from edgetune.errors import InputError
from edgetune.evaluate.metrics import sqnr_db
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.ir.graph import Graph
from edgetune.ir.torch_exec import GraphRunner, run_batches
from edgetune.prune import PruneConfig, prune_channels
from edgetune.prune.transformer import Block, find_blocks, remove_block

LENGTH = 16


def _captured(model: torch.nn.Module) -> Graph:
    return capture(model, (LENGTH,), "int64", tuple(NAMES))


def _run(graph: Graph, x: np.ndarray) -> np.ndarray:
    return run_batches(GraphRunner(graph, quantized=False), x[:, : len(graph.inputs)])


def _zeroed(graph: Graph, block: Block, keep: np.ndarray) -> Graph:
    """``graph`` with the removed units' columns zeroed in the layers that read them."""
    copied = copy.deepcopy(graph)
    for node, size in block.columns:
        weight = copied.const(node.inputs[1]).copy()
        gone = np.setdiff1d(np.arange(block.count), keep)
        for unit in gone:
            weight[:, unit * size : (unit + 1) * size] = 0.0
        copied.tensors[node.inputs[1]].data = weight
    return copied


def test_blocks_are_found_in_each_layer() -> None:
    blocks = find_blocks(_captured(bert()))
    kinds = sorted((b.kind, b.count) for b in blocks)
    assert kinds == [("heads", 4), ("heads", 4), ("neurons", 128), ("neurons", 128)]
    heads = next(b for b in blocks if b.kind == "heads")
    assert heads.layers == ["layers.0.query", "layers.0.key", "layers.0.value", "layers.0.output"]


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_removing_units_equals_zeroing_their_output_columns(kind: str) -> None:
    """Exact: removing head h (or neuron j) computes what the unpruned model computes with the
    output projection's columns of h (or the second layer's column j) set to zero."""
    graph, x = _captured(bert()), _tokens(12, 0)
    for block in [b for b in find_blocks(graph) if b.kind == kind]:
        keep = np.array([0, 2]) if kind == "heads" else np.arange(0, block.count, 3)
        expected = _run(_zeroed(graph, block, keep), x)
        remove_block(graph, block, keep)
        graph.remove_unused()
        np.testing.assert_allclose(_run(graph, x), expected, rtol=1e-4, atol=1e-5)


def test_transformers_exports_have_their_blocks(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"vocab_size": 64, "max_position_embeddings": 32, "attn_implementation": "eager"}
    config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformers.DistilBertModel(config)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    graph = import_onnx(_export(Hidden(), tmp_path / "distil.onnx", 2), (LENGTH,))
    assert sorted((b.kind, b.count) for b in find_blocks(graph)) == [("heads", 4), ("heads", 4), ("neurons", 64), ("neurons", 64)]
    x = _tokens(8, 1)
    blocks = find_blocks(graph)
    expected = graph
    for block in blocks:
        expected = _zeroed(expected, block, np.array([1, 3]) if block.kind == "heads" else np.arange(32))
    for block in blocks:
        remove_block(graph, block, np.array([1, 3]) if block.kind == "heads" else np.arange(32))
    graph.remove_unused()
    np.testing.assert_allclose(_run(graph, x), _run(expected, x), rtol=1e-4, atol=1e-5)


def test_prune_channels_takes_its_ratio_for_neurons_and_heads_their_own() -> None:
    graph = _captured(bert_classifier())
    report = prune_channels(graph, PruneConfig(0.5, heads=0.25), _tokens(16, 0)).to_dict()
    rows = {(tuple(r["layers"]), r.get("kind")): r for r in report["groups"]}
    heads = [r for (_, kind), r in rows.items() if kind == "heads"]
    neurons = [r for (_, kind), r in rows.items() if kind == "neurons"]
    assert [(r["before"], r["after"]) for r in heads] == [(4, 3), (4, 3)]
    assert [(r["before"], r["after"]) for r in neurons] == [(128, 64), (128, 64)]
    assert report["macs"]["ratio"] < 0.7
    assert _run(graph, _tokens(4, 1)).shape == (4, 3)


def test_global_allocation_spreads_the_cut_across_blocks_by_importance() -> None:
    """One threshold per kind over every block: the total cut is the ratio's, the blocks'
    shares differ, and a block whose neurons matter less loses more of them (never all)."""
    model = bert_classifier()
    with torch.no_grad():  # the second block's feed-forward weights at a tenth: less important
        model.layers[1].intermediate.weight.mul_(0.1)
        model.layers[1].out.weight.mul_(0.1)
    graph = _captured(model)
    report = prune_channels(graph, PruneConfig(0.5, heads=0.25, allocation="global"), _tokens(16, 0)).to_dict()
    neurons = [r for r in report["groups"] if r.get("kind") == "neurons"]
    heads = [r for r in report["groups"] if r.get("kind") == "heads"]
    # every neuron of the weak block falls below the threshold; it keeps one, the floor
    assert [r["after"] for r in neurons] == [128, 1], neurons
    assert sum(r["after"] for r in heads) == 6 and all(r["after"] >= 1 for r in heads)
    assert _run(graph, _tokens(4, 1)).shape == (4, 3)


def test_at_least_one_head_stays_and_protected_blocks_stay_whole() -> None:
    graph = _captured(bert())
    report = prune_channels(graph, PruneConfig(0.5, heads=0.99, protect=("layers.1",)), _tokens(16, 0)).to_dict()
    rows = [r for r in report["groups"] if r.get("kind")]
    for row in rows:
        protected = row["layers"][0].startswith("layers.1")
        assert row["after"] == (row["before"] if protected else (1 if row["kind"] == "heads" else 64)), row
    with pytest.raises(InputError, match="head pruning ratio"):
        PruneConfig(0.5, heads=1.0)


class _HeadsOut(torch.nn.Module):
    """Attention whose per-head probabilities are also averaged into the output: heads that
    reach an op the walk does not follow keep the block whole."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(64, 32)
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(3))
        self.out = torch.nn.Linear(32, 32)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        q, k, v = (layer(x).reshape(x.shape[0], LENGTH, 4, 8).transpose(1, 2) for layer in self.qkv)
        probs = (q @ k.transpose(-1, -2)).softmax(-1)
        context = (probs @ v).transpose(1, 2).reshape(x.shape)
        return self.out(context).mean(1) + probs.mean((1, 2))[:, :1]


def test_heads_that_escape_keep_their_block_whole() -> None:
    graph = capture(_HeadsOut().eval(), (LENGTH,), "int64")
    assert not [b for b in find_blocks(graph) if b.kind == "heads"]


def test_a_pruned_encoder_compresses_to_both_formats(tmp_path: Path) -> None:
    """From the command line: smaller layers and fewer heads in both int8 files, which agree."""
    (tmp_path / "encoder.py").write_text("from text_encoder import bert as model\n")
    x = _tokens(64, 0)
    np.savez(tmp_path / "calib.npz", **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    argv = ["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "calib.npz"), "-o", str(out)]
    assert run([*argv, "--prune", "channel:0.5:taylor", "--prune-heads", "0.25", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r.get("kind") for r in report["pruning"]["groups"]} >= {"heads", "neurons"}
    check = _tokens(16, 2)
    onnx_out = OnnxRunner((out / "model.onnx").read_bytes()).run(check)
    assert sqnr_db(onnx_out, TfliteRunner((out / "model.tflite").read_bytes()).run(check)) > 35
    import onnx

    model = onnx.load(str(out / "model.fp32.onnx"))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    targets = [initializers[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Reshape"]
    assert [0, LENGTH, 3, 8] in targets and [0, LENGTH, 4, 8] not in targets  # 3 heads of 8 in every split
    widths = {array.shape for array in initializers.values() if array.ndim == 2}
    assert (64, 32) in widths and (128, 32) not in widths  # the feed-forward layers at half width
    recipe = (out / "recipe.toml").read_text()
    assert "heads = 0.25" in recipe


@pytest.mark.parametrize("distill", ["predictions", "intermediate", "tinybert"])
def test_a_pruned_sentence_encoder_recovers_towards_the_original(tmp_path: Path, distill: str) -> None:
    """Without labels, an L2-normalized output is distilled by cosine (task embedding), and
    --distill intermediate adds the LayerNorm outputs; either raises the validation cosine to
    the unpruned model within a step budget."""
    (tmp_path / "encoder.py").write_text("from text_encoder import bert as model\n")
    x = _tokens(96, 0)
    np.savez(tmp_path / "data.npz", **{name: x[:, i] for i, name in enumerate(NAMES)})
    out = tmp_path / "out"
    argv = ["compress", f"{tmp_path / 'encoder.py'}:model", "--calib", str(tmp_path / "data.npz"), "-o", str(out), "--quiet"]
    argv += ["--prune", "channel:0.5", "--prune-heads", "0.5", "--train", str(tmp_path / "data.npz"), "--finetune", "40steps"]
    assert run([*argv, "--distill", distill, "--finetune-lr", "1e-3"]) == 0
    report = json.loads((out / "report.json").read_text())
    tuned = report["finetune"]
    assert tuned["task"] == "embedding" and tuned["validation"]["metric"] == "cosine to the unpruned model"
    assert tuned["metric_best"] > tuned["metric_before"]
    assert tuned["config"]["distill"] == distill
    assert 0 < report["evaluation"]["vs_original"]["onnx_int8"]["cosine_mean"] <= 1
    assert f'distill = "{distill}"' in (out / "recipe.toml").read_text()


def test_intermediate_distillation_needs_layer_norm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits:calibration", "--train", "digits:train", "--finetune", "2steps"]
    code = run([*argv, "--distill", "intermediate", "--prune", "channel:0.25", "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "LayerNorm" in err[0] and not out.exists()
