"""A classification head for an encoder that has none, before a fine-tune on labelled data.

A pretrained sentence encoder returns an embedding, and a bare BERT its hidden states; given
class labels, their outputs would otherwise be read as class scores (384 "classes"). The head
is a linear layer on the embedding (or on the first token's hidden state, BERT's [CLS]),
initialized as the nearest class mean of the training data: ``w_c = s * mu_c`` and
``b_c = -s * |mu_c|^2 / 2``, so that before any step the model predicts the class whose mean
embedding is closest (a prototype classifier, as in Snell et al., "Prototypical Networks",
2017). ``s`` sharpens the softmax of an L2-normalized embedding, whose distances lie in [0, 4].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.data import Dataset
from edgetune.ir.graph import Graph, Node, Tensor
from edgetune.ir.torch_exec import GraphRunner, run_batches

NORMALIZED_SCALE = 16.0  # s for an L2-normalized embedding; 1 for hidden states
FEATURE_SAMPLES = 2048  # training samples whose embeddings set the class means


def embeds(graph: Graph) -> bool:
    """Outputs that are vectors to compare, not class scores: an L2-normalized embedding, or a
    token model's hidden states ([batch, tokens, features]; a segmenter's [batch, classes, H, W]
    stays a classification per pixel)."""
    out = graph.outputs[0]
    producer = graph.producers().get(out)
    tokens = any(graph.tensors[name].is_integer for name in graph.inputs) and len(graph.tensors[out].shape) == 3
    return (producer is not None and producer.op == "l2_normalize") or tokens


def needs_head(graph: Graph, data: Dataset | None) -> bool:
    """Class labels for a model whose output is an embedding."""
    return data is not None and data.y is not None and data.has_classes and embeds(graph)


def add_head(graph: Graph, data: Dataset) -> dict[str, Any]:
    """Give ``graph`` a classification head for ``data``'s classes, in place; the report block."""
    assert data.y is not None
    out = graph.outputs[0]
    producer = graph.producers().get(out)
    normalized = producer is not None and producer.op == "l2_normalize"
    features = out
    if len(graph.tensors[out].shape) == 3:  # hidden states: the first token's, as BERT classifies
        features = _first_token(graph, out)
    x, y = data.x[:FEATURE_SAMPLES], data.y[:FEATURE_SAMPLES].astype(np.int64)
    graph.outputs = [features]
    embedded = run_batches(GraphRunner(graph), x).reshape(len(x), -1).astype(np.float64)
    classes = int(max(y.max() + 1, len(data.labels)))
    width = embedded.shape[1]
    means = np.zeros((classes, width))
    for c in range(classes):
        if (y == c).any():
            means[c] = embedded[y == c].mean(axis=0)
    scale = NORMALIZED_SCALE if normalized else 1.0
    weight = (scale * means).astype(np.float32)
    bias = (-0.5 * scale * (means**2).sum(axis=1)).astype(np.float32)
    bias[[c for c in range(classes) if not (y == c).any()]] = float(bias.min()) - 1.0  # a class absent from the data: never first
    name = _unique(graph, "head")
    for suffix, value in (("weight", weight), ("bias", bias)):
        graph.tensors[f"{name}.{suffix}"] = Tensor(f"{name}.{suffix}", value.shape, value)
    logits = f"{name}.out"
    graph.tensors[logits] = Tensor(logits, (graph.tensors[features].shape[0], classes))
    graph.nodes.append(Node("linear", name, [features, f"{name}.weight", f"{name}.bias"], [logits]))
    graph.outputs = [logits]
    predicted = (embedded @ weight.T.astype(np.float64) + bias).argmax(axis=1)
    return {
        "layer": name,
        "classes": classes,
        "features": "the L2-normalized embedding"
        if normalized
        else ("the first token's hidden state" if features != out else "the output"),
        "width": width,
        "init": "nearest class mean",
        "init_training_accuracy": round(float((predicted == y).mean()), 4),
        "samples": len(x),
    }


def needs_pooling(graph: Graph, data: Dataset | None) -> bool:
    """Similarity pairs for a token model whose output is hidden states, not one vector."""
    return data is not None and data.pair is not None and embeds(graph) and len(graph.tensors[graph.outputs[0]].shape) == 3


MASK = "attention_mask"


def add_pooling(graph: Graph) -> dict[str, Any]:
    """Make hidden states one sentence embedding, in place, L2-normalized for a bi-encoder's
    cosine; the report block. With an ``attention_mask`` input, the mean of the tokens' states
    under the mask (what sentence-transformers' encoders are trained with, as the pooling of a
    Hugging Face sentence encoder's folder captures it); else the first token's ([CLS])."""
    hidden = graph.outputs[0]
    batch, tokens, width = graph.tensors[hidden].shape
    if MASK in graph.inputs and graph.tensors[MASK].shape[-1] == tokens:
        pooled, how = _masked_mean(graph, hidden), "the mean of the tokens' hidden states under attention_mask"
    else:
        pooled, how = _first_token(graph, hidden), "the first token's hidden state"
    name = _unique(graph, "pooled")
    graph.tensors[name] = Tensor(name, (batch, width))
    graph.nodes.append(Node("l2_normalize", name, [pooled], [name], {"axis": 1, "eps": 1e-12}))
    graph.outputs = [name]
    return {"pooling": f"{how}, L2-normalized", "width": width}


def _masked_mean(graph: Graph, hidden: str) -> str:
    """sum(h * mask) / max(sum(mask), 1e-9) over the tokens, each sum a mean times the count."""
    batch, tokens, width = graph.tensors[hidden].shape
    base = _unique(graph, "pool")
    count = f"{base}.tokens"
    graph.tensors[count] = Tensor(count, (), np.asarray(float(tokens), np.float32))

    def add(op: str, suffix: str, inputs: list[str], shape: tuple[int, ...], attrs: dict[str, Any], dtype: str = "float32") -> str:
        out = f"{base}.{suffix}"
        graph.tensors[out] = Tensor(out, shape, dtype=dtype)
        graph.nodes.append(Node(op, out, inputs, [out], attrs))
        return out

    column = add("reshape", "mask3", [MASK], (batch, tokens, 1), {"shape": [tokens, 1]}, "int64")
    mask = add("cast", "maskf", [column], (batch, tokens, 1), {})
    masked = add("mul", "masked", [hidden, mask], (batch, tokens, width), {})
    total = add(
        "mul", "sum", [add("mean", "sum_mean", [masked], (batch, width), {"axes": [1], "keepdim": False}), count], (batch, width), {}
    )
    kept = add("mul", "kept", [add("mean", "kept_mean", [mask], (batch, 1), {"axes": [1], "keepdim": False}), count], (batch, 1), {})
    kept = add("clamp", "kept_clamped", [kept], (batch, 1), {"min": 1e-9, "max": None})
    return add("div", "mean", [total, kept], (batch, width), {})


def _first_token(graph: Graph, hidden: str) -> str:
    """[batch, tokens, features] -> the first token's [batch, features]."""
    _, _, width = graph.tensors[hidden].shape
    sliced, flat = f"{hidden}.first", f"{hidden}.first_flat"
    graph.tensors[sliced] = Tensor(sliced, (graph.tensors[hidden].shape[0], 1, width))
    graph.nodes.append(Node("slice", sliced, [hidden], [sliced], {"axis": 1, "start": 0, "end": 1, "step": 1}))
    graph.tensors[flat] = Tensor(flat, (graph.tensors[hidden].shape[0], width))
    graph.nodes.append(Node("reshape", flat, [sliced], [flat], {"shape": [width]}))
    return flat


def _unique(graph: Graph, base: str) -> str:
    names = {node.name for node in graph.nodes}
    name = base
    while name in names or f"{name}.weight" in graph.tensors:
        name += "_"
    return name
