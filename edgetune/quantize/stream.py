"""The residual stream in float, and outlier channels spread over int8's range: how a
transformer encoder keeps its accuracy in int8.

Measured on all-MiniLM-L6-v2 with one tensor class in int8 at a time (docs/benchmarks.md):
the LayerNorm outputs and the residual additions in int8 cost the most (mean cosine to fp32
0.81 and 0.93), because the stream carries a few channels ten to thirty times larger than
the rest, and an int8 error there is carried through every later layer. The matrix
multiplications that hold nearly all the work lose little, once their inputs' outlier
channels no longer set everyone's step. So, for a graph with LayerNorm:

- **Float stream.** LayerNorm, GELU, the attention products and softmax, and the additions
  and subtractions around them run in float in both artifacts (each float op between its
  inputs' dequantization and, where an int8 op reads it, a quantization), and so does
  everything that reads only float values (the heads' reshapes, pooling, L2 normalization).
  The linear layers, nearly all the work, stay int8.
- **A quantization point per float tensor.** An int8 op reading a float tensor reads it
  through a ``channels`` node, which quantizes it (one QuantizeLinear, or a TFLite QUANTIZE),
  shared by all such readers (a layer's query, key and value projections read one).
- **Outlier channels on the input side** (outlier channel splitting, Zhao et al., ICML 2019,
  as per-embedding-group quantization does for BERT, Bondarenko et al., EMNLP 2021): when
  every reader is a linear layer, a channel much larger than the rest is cut into ``n``
  copies of ``x / n``, and the layers' weight columns for it are repeated: the product is
  the same, the copies fit the range the other channels set, and the weights keep their
  grid. The ``channels`` node scales the channels by ``factors`` and appends ``copies`` (the
  indices of the channels copied, each copy scaled like its source) before quantizing.
- **Outlier channels on the output side**: a linear layer whose output only float ops read
  (the projection into the residual stream, the feed-forward expansion before GELU) gets
  its outlier rows divided by ``n`` (their int8 levels are unchanged, per-channel weight
  scales absorb it), and a ``channels`` node after it multiplies them back in float.

Ranges of the tensors the split changes come from per-channel minima and maxima over the
calibration samples (min/max: clipping a stream outlier is what costs the most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, Tensor

# softmax too: ONNX Runtime's int8 softmax (QLinearSoftmax) took 2.7 of 14 ms in MiniLM, its
# float one a fraction of that, and the probabilities are quantized for the product after it.
# (ONNX Runtime fuses a DequantizeLinear, Softmax, QuantizeLinear chain into it again, so
# the scale before it runs in float too: see BEFORE_FLOAT.)
SEEDS = frozenset({"layer_norm", "gelu", "softmax"})
# Float always, with --stream off too: an attention mask cast to float and what is computed
# from it alone (the additive bias ``(1 - mask) * finfo.min``, whose range down to -3.4e38
# would leave every other value in int8 at zero; a masked mean's counts), and a division by a
# tensor (a masked mean's; neither runtime has an int8 kernel for it); a comparison (a mask's
# ``to(bool)`` after float arithmetic).
ALWAYS_FLOAT = frozenset({"cast", "div", "compare"})
# Ops that stay int8 even when they read float values: the work (their inputs get a
# quantization point), and lookups of integer ids.
INT8_OPS = WEIGHTED_OPS | {"matmul", "gather"}
# Ops that run in float when only float ops read them (an addition into the stream, the
# attention scores' scale before a float softmax, the heads' reshapes and transposes before a
# float product): their int8 output would be dequantized at once. (For the reshapes there is a
# second reason: LiteRT 2.3's XNNPACK delegate gave wrong attention scores for an int8
# TRANSPOSE, DEQUANTIZE, float BATCH_MATMUL chain at batch 32, right ones at batch 8.)
BEFORE_FLOAT = frozenset({"add", "sub", "mul", "div", "reshape", "transpose"})
STREAM_KEY = "stream"  # graph.meta: what isolate_stream and split_outliers did
# Channels allowed above the threshold the others set: a share of the width, from 4 to 16.
# all-MiniLM-L6-v2's mean cosine to fp32 (widths 384 and 1536) with 4 for every tensor: 0.9965,
# 16: 0.9977 (337 copies in all), 32: 0.9978; a 24th of the width: 0.9979 (646 copies).
OUTLIER_SHARE = 1 / 24
MIN_OUTLIERS, MAX_OUTLIERS = 4, 16
OUTLIER_RATIO = 2.0  # a channel is an outlier when it exceeds that threshold by this much
MAX_EXTRA_SHARE = 0.25  # input-side copies add at most this share of the channels
# SmoothQuant's migration strength (Xiao et al., ICML 2023, section 4): a channel's scale is
# its activation range to this power over its weight columns' range to (1 - this power);
# 0.5 balances the two and is the paper's choice for most encoders.
SMOOTH_ALPHA = 0.5
SMOOTH_LIMITS = (1e-2, 1e2)  # a scale stays in this range: a near-dead channel must not blow its weights up


def applies(graph: Graph) -> bool:
    """The float stream applies to graphs with a LayerNorm (transformer encoders, and others
    built like them), or an attention mask cast to float."""
    return any(node.op == "layer_norm" or node.op in ALWAYS_FLOAT for node in graph.nodes)


def is_stream(node: Node) -> bool:
    return bool(node.attrs.get(STREAM_KEY))


def _float_nodes(graph: Graph, mask_only: bool = False) -> set[str]:
    """The ops that run in float: the seeds, additions beside them, and what reads only float.
    ``mask_only``: the attention mask's ops only (--stream off)."""
    consumers = graph.consumers()
    producers = graph.producers()
    chosen = {node.name for node in graph.nodes if node.op in ALWAYS_FLOAT}
    if not mask_only:
        chosen |= {node.name for node in graph.nodes if node.op in SEEDS or _product_of_activations(graph, node)}

    def activations(node: Node) -> list[str]:
        return [n for n in node.inputs if n and graph.tensors[n].data is None and not graph.tensors[n].is_integer]

    def is_float(name: str) -> bool:
        producer = producers.get(name)
        return producer is not None and producer.name in chosen

    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.name in chosen or node.op in INT8_OPS:
                continue
            inputs = activations(node)
            if not inputs:
                continue
            readers = consumers.get(node.outputs[0], [])
            # a softmax over masked scores too: their int8 range would reach the mask's -3.4e38
            beside = node.op in ("add", "sub", "softmax") and any(is_float(n) for n in inputs)
            before = node.op in BEFORE_FLOAT and bool(readers) and all(r.name in chosen for r in readers)
            if beside or before or all(is_float(n) for n in inputs):
                chosen.add(node.name)
                changed = True
    return chosen


def _product_of_activations(graph: Graph, node: Node) -> bool:
    """An attention product (scores, context): both operands computed. In float it is a small
    share of the work (about 5% of MiniLM's multiply-accumulates); in int8 its three
    requantizations cost 0.001 of cosine, and ONNX Runtime ran it slower."""
    return node.op == "matmul" and all(graph.tensors[name].data is None for name in node.inputs)


def isolate_stream(graph: Graph, mask_only: bool = False) -> None:
    """Mark the float ops and give every float tensor that an int8 op reads a quantization
    point (a ``channels`` node); give every linear layer whose output only float ops read a
    ``channels`` node after it (the output side of the outlier split). In place, once.
    ``mask_only``: only the attention mask's ops and the additions beside them (--stream off)."""
    if STREAM_KEY in graph.meta or not applies(graph):
        return
    floating = _float_nodes(graph, mask_only)
    if not floating:
        return
    for node in graph.nodes:
        if node.name in floating:
            node.attrs["precision"] = "float"
            node.attrs[STREAM_KEY] = True
    consumers = graph.consumers()
    nodes: list[Node] = []
    inputs = 0
    for node in graph.nodes:
        nodes.append(node)
        out = node.outputs[0]
        readers = consumers.get(out, [])
        if node.name in floating:
            int8_readers = [r for r in readers if r.name not in floating]
            if int8_readers and not graph.tensors[out].is_integer:  # integers (a mask's flags) need no point
                point = _channels(graph, node, out, "input")
                nodes.append(point)
                inputs += 1
                for reader in int8_readers:
                    reader.inputs = [point.outputs[0] if name == out else name for name in reader.inputs]
        elif node.op == "linear" and readers and all(r.name in floating for r in readers) and out not in graph.outputs:
            point = _channels(graph, node, out, "output")
            nodes.append(point)
            for reader in readers:
                reader.inputs = [point.outputs[0] if name == out else name for name in reader.inputs]
    graph.nodes = nodes
    graph.meta[STREAM_KEY] = {"float_ops": len(floating), "quantization_points": inputs}


def _channels(graph: Graph, after: Node, tensor: str, side: str) -> Node:
    """An identity ``channels`` node reading ``tensor`` (the split fills its indices and factors)."""
    name = f"{after.name}.{'quantize' if side == 'input' else 'rescale'}"
    out = f"{tensor}.{'q' if side == 'input' else 'f'}"
    graph.tensors[out] = Tensor(out, graph.tensors[tensor].shape)
    # Both run in float; an input-side point's output is quantized, an output-side one's is not.
    attrs: dict[str, Any] = {"side": side, "factors": None, "copies": [], "precision": "float"}
    if side == "output":
        attrs[STREAM_KEY] = True
    return Node("channels", name, [tensor], [out], attrs)


def channel_points(graph: Graph) -> list[str]:
    """The float tensors whose per-channel ranges calibration collects: what input-side
    points read, and what output-side points write (both are the same before and after the split)."""
    names = []
    for node in graph.nodes:
        if node.op == "channels":
            names.append(node.inputs[0] if node.attrs["side"] == "input" else node.outputs[0])
    return names


@dataclass(frozen=True)
class ChannelRange:
    """Per-channel minimum and maximum over the calibration samples (last axis)."""

    low: np.ndarray
    high: np.ndarray

    @property
    def magnitude(self) -> np.ndarray:
        return np.maximum(np.abs(self.low), np.abs(self.high))


def copies(magnitude: np.ndarray, extra_cap: int | None = None, powers_of_two: bool = False) -> np.ndarray:
    """How many parts each channel is cut into (1 for most): channels above the threshold
    that the largest but ``outliers`` set (a share of the width), when the largest exceeds it clearly.
    ``extra_cap``: at most that many parts beyond one a channel (the threshold rises until
    they fit). ``powers_of_two``: each count rounded up to one, so dividing and multiplying
    back is exact."""
    ones = np.ones(magnitude.size, np.int64)
    outliers = min(MAX_OUTLIERS, max(MIN_OUTLIERS, round(OUTLIER_SHARE * magnitude.size)))
    if magnitude.size <= outliers + 1:
        return ones
    threshold = float(np.sort(magnitude)[::-1][outliers])
    if threshold <= 0 or float(magnitude.max()) < OUTLIER_RATIO * threshold:
        return ones
    while True:
        ratio = np.maximum(magnitude / threshold - 1e-6, 1.0)
        parts = (2 ** np.ceil(np.log2(ratio)) if powers_of_two else np.ceil(ratio)).astype(np.int64)
        if extra_cap is None or int(parts.sum() - parts.size) <= extra_cap:
            return parts
        threshold *= 1.25  # fewer copies, each a little larger
        if float(magnitude.max()) < OUTLIER_RATIO * threshold:
            return ones


def smooth_scales(magnitude: np.ndarray, weights: list[np.ndarray], alpha: float | None = None) -> np.ndarray:
    """SmoothQuant's per-channel scales ``s`` (the activation is divided by them, the weight
    columns multiplied): ``max|x_j| ** alpha / max|w_:,j| ** (1 - alpha)``, over every layer
    that reads the activation. A channel without range on either side keeps 1."""
    alpha = SMOOTH_ALPHA if alpha is None else alpha
    columns = np.max([np.abs(w).max(axis=0) for w in weights], axis=0).astype(np.float64)
    usable = (magnitude > 0) & (columns > 0)
    scales = np.ones(magnitude.size)
    scales[usable] = magnitude[usable] ** alpha / columns[usable] ** (1.0 - alpha)
    if usable.any():  # a common factor changes nothing but the weights' magnitude: centre the scales on 1
        scales[usable] /= float(np.exp(np.mean(np.log(scales[usable]))))
    return np.clip(scales, *SMOOTH_LIMITS)


def split_outliers(graph: Graph, ranges: dict[str, ChannelRange], smooth: bool = False) -> dict[str, Any]:
    """Fill the ``channels`` nodes from per-channel ranges and change the linear layers they
    serve to match (in place, once); returns what was split, for the report. ``smooth``: each
    input-side point first migrates its channels' ranges into the weights (SmoothQuant), and
    splits only what stays an outlier after that."""
    done = graph.meta.get(STREAM_KEY)
    if done is None:
        return {}
    if done.get("split") is not None:
        return dict(done["split"])
    consumers = graph.consumers()
    producers = graph.producers()
    split: dict[str, Any] = {"input_channels_added": 0, "input_points": 0, "output_rows_scaled": 0, "output_points": 0}
    if smooth:
        split["smoothed_points"] = 0
    for node in [n for n in graph.nodes if n.op == "channels"]:
        if node.attrs["side"] == "input":
            readers = consumers.get(node.outputs[0], [])
            shape = graph.tensors[node.inputs[0]].shape
            if not readers or len(shape) > 3 or any(r.op != "linear" or r.inputs[0] != node.outputs[0] for r in readers):
                continue
            magnitude = ranges[node.inputs[0]].magnitude
            scales = np.ones(magnitude.size)
            if smooth:
                scales = smooth_scales(magnitude, [_weight(graph, r) for r in readers])
                for reader in readers:
                    _scale_columns(graph, reader, scales)
                node.attrs["smooth"] = [float(v) for v in scales]
                node.attrs["factors"] = [float(v) for v in 1.0 / scales]
                split["smoothed_points"] += 1
            parts = copies(magnitude / scales, int(MAX_EXTRA_SHARE * magnitude.size))
            if parts.max() == 1:
                continue
            extra = [c for c in range(magnitude.size) for _ in range(int(parts[c]) - 1)]
            node.attrs["factors"] = [1.0 / float(p * v) for p, v in zip(parts, scales, strict=True)]
            node.attrs["copies"] = extra
            graph.tensors[node.outputs[0]].shape = (*shape[:-1], magnitude.size + len(extra))
            for reader in readers:
                _repeat_columns(graph, reader, list(range(magnitude.size)) + extra)
            split["input_channels_added"] += len(extra)
            split["input_points"] += 1
        else:
            layer = producers[node.inputs[0]]
            parts = copies(ranges[node.outputs[0]].magnitude, powers_of_two=True)
            if parts.max() == 1:
                continue
            node.attrs["factors"] = [float(p) for p in parts]
            _divide_rows(graph, layer, parts)
            split["output_rows_scaled"] += int((parts > 1).sum())
            split["output_points"] += 1
    done["split"] = split
    return split


def _weight(graph: Graph, layer: Node) -> np.ndarray:
    data = graph.tensors[layer.inputs[1]].data
    assert data is not None
    return data


def _scale_columns(graph: Graph, layer: Node, scales: np.ndarray) -> None:
    weight = graph.tensors[layer.inputs[1]]
    assert weight.data is not None
    weight.data = (weight.data * scales.astype(np.float32)).astype(np.float32)
    if weight.qdata is not None:
        weight.qdata = (weight.qdata * scales.astype(np.float32)).astype(np.float32)


def _repeat_columns(graph: Graph, layer: Node, indices: list[int]) -> None:
    weight = graph.tensors[layer.inputs[1]]
    assert weight.data is not None
    weight.data = np.ascontiguousarray(weight.data[:, indices])
    weight.shape = weight.data.shape
    if weight.qdata is not None:
        weight.qdata = np.ascontiguousarray(weight.qdata[:, indices])


def _divide_rows(graph: Graph, layer: Node, parts: np.ndarray) -> None:
    divisor = parts.astype(np.float32)
    for index, name in enumerate(layer.inputs[1:3]):
        tensor = graph.tensors[name] if name else None
        if tensor is None or tensor.data is None:
            continue
        shape = (-1, 1) if index == 0 else (-1,)
        tensor.data = (tensor.data / divisor.reshape(shape)).astype(np.float32)
        if tensor.qdata is not None:
            tensor.qdata = (tensor.qdata / divisor.reshape(shape)).astype(np.float32)


def point_ranges(graph: Graph, ranges: dict[str, ChannelRange]) -> dict[str, tuple[float, float]]:
    """The int8 range of every tensor a ``channels`` node decides: an input-side point's
    output (its channels scaled; the copies repeat scaled channels), and an output-side
    point's input (the layer's output, outlier rows divided)."""
    chosen = {}
    for node in (n for n in graph.nodes if n.op == "channels"):
        factors = node.attrs["factors"]
        if node.attrs["side"] == "input":
            span, target = ranges[node.inputs[0]], node.outputs[0]
            scale = np.ones(span.low.size) if factors is None else np.asarray(factors)
        else:
            span, target = ranges[node.outputs[0]], node.inputs[0]
            scale = np.ones(span.low.size) if factors is None else 1.0 / np.asarray(factors)
        chosen[target] = (float((span.low * scale).min()), float((span.high * scale).max()))
    return chosen


def plain(graph: Graph) -> Graph:
    """A copy of ``graph`` without the outlier split, for the float artifacts: the
    ``channels`` nodes go, input-side layers keep their original columns (the first ones),
    output-side rows are multiplied back (by powers of two: exact)."""
    points = {node.outputs[0]: node for node in graph.nodes if node.op == "channels"}
    if not points:
        return graph
    producers, consumers = graph.producers(), graph.consumers()
    tensors = dict(graph.tensors)
    nodes = [
        Node(node.op, node.name, [points[n].inputs[0] if n in points else n for n in node.inputs], list(node.outputs), dict(node.attrs))
        for node in graph.nodes
        if node.op != "channels"
    ]
    for out, point in points.items():
        if point.attrs["side"] == "input" and (point.attrs["copies"] or point.attrs.get("smooth")):
            width = graph.tensors[point.inputs[0]].shape[-1]
            unsmooth = np.asarray(point.attrs.get("smooth") or np.ones(width), np.float32)
            for reader in consumers.get(out, []):
                data = np.ascontiguousarray(_data(tensors, reader.inputs[1])[:, :width] / unsmooth).astype(np.float32)
                tensors[reader.inputs[1]] = Tensor(reader.inputs[1], data.shape, data)
        elif point.attrs["side"] == "output" and point.attrs["factors"] is not None:
            factors = np.asarray(point.attrs["factors"], np.float32)
            layer = producers[point.inputs[0]]
            for index, name in enumerate(n for n in layer.inputs[1:3] if n):
                data = (_data(tensors, name) * (factors.reshape(-1, 1) if index == 0 else factors)).astype(np.float32)
                tensors[name] = Tensor(name, data.shape, data)
    outputs = [points[n].inputs[0] if n in points else n for n in graph.outputs]
    copy = Graph(list(graph.inputs), outputs, tensors, nodes, dict(graph.meta))
    copy.remove_unused()
    return copy


def _data(tensors: dict[str, Tensor], name: str) -> np.ndarray:
    data = tensors[name].data
    assert data is not None, f"{name} is a constant"
    return data


def summary(graph: Graph) -> dict[str, Any] | None:
    """The report's block: how many ops run in float, and what the outlier split did."""
    done = graph.meta.get(STREAM_KEY)
    if done is None:
        return None
    return {
        "float_ops": done["float_ops"],
        "quantization_points": done["quantization_points"],
        "split": done.get("split") is not None,
        **{"input_channels_added": 0, "input_points": 0, "output_rows_scaled": 0, "output_points": 0, "smoothed_points": 0},
        **done.get("split", {}),
        "note": "LayerNorm, GELU and the residual additions run in float; outlier channels are split, after SmoothQuant's"
        " migration at smoothed_points (docs/int8.md, Transformers)",
    }
