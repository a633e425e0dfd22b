"""Calibration: observe activations on sample data and attach int8 parameters to the graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgetune.errors import InputError
from edgetune.ir import quant as params
from edgetune.ir.graph import WEIGHTED_OPS, Graph, Node, QParams, depthwise_multiplier
from edgetune.ir.select import select
from edgetune.progress import Progress
from edgetune.quantize.config import QuantConfig
from edgetune.quantize.observers import METHODS, OUTPUT_METHOD, SAMPLE_PER_BATCH, TensorStats, percentile_range
from edgetune.quantize.output_error import choose_by_output
from edgetune.quantize.stream import ChannelRange, channel_points, is_stream, isolate_stream, point_ranges, split_outliers
from edgetune.quantize.summaries import add_channel_summaries, add_summaries
from edgetune.timing import step, timed

# Ops whose int8 output reuses the input's parameters: TFLite's kernels for them move or
# average values without rescaling, so different parameters would give wrong results.
SHARES_INPUT_PARAMS = {"reshape", "maxpool2d", "avgpool2d", "pad", "transpose", "resize", "slice", "depth_to_space"}
# Ops whose constant operands stay float: both writers compute them in float between the
# input's dequantization and the output's quantization (TFLite has no int8 LayerNorm).
FLOAT_OPERANDS = {"layer_norm", "group_norm"}
FIXED_OUTPUT_PARAMS = params.FIXED_OUTPUT_PARAMS
# Ops whose int8 output is rows of a constant table: it takes the table's parameters (TFLite's
# GATHER copies int8 values, so input and output share them).
TABLE_LOOKUPS = {"gather"}
# Every activation of a calibration batch is materialised as an output, so batches stay small.
CALIBRATION_BATCH = 8


@dataclass
class CalibrationRecord:
    tensor: str
    method: str
    chosen: tuple[float, float]
    ranges: dict[str, tuple[float, float]]
    audit: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "method": self.method,
            "chosen": list(self.chosen),
            "ranges": {k: [float(v[0]), float(v[1])] for k, v in self.ranges.items()},
            **self.audit,
        }


def audit(stats: TensorStats, chosen: tuple[float, float]) -> dict[str, float]:
    """How heavy the tails are and what the chosen range cuts: the share of calibration values
    outside it, and the largest |value| over the 99.99th percentile of |value| (above about 3,
    a few outliers stretch a min/max range)."""
    if not stats.hist.any():
        return {}
    centers = (stats.edges()[:-1] + stats.edges()[1:]) / 2
    total = stats.hist.sum()
    outside = stats.hist[(centers < chosen[0]) | (centers > chosen[1])].sum()
    magnitude = np.abs(centers)
    order = np.argsort(magnitude)
    cdf = np.cumsum(stats.hist[order]) / total
    p9999 = float(magnitude[order][min(int(np.searchsorted(cdf, 0.9999)), len(order) - 1)])
    peak = max(abs(stats.low), abs(stats.high))
    return {"clipped_share": round(float(outside / total), 6), "outlier_ratio": round(peak / p9999, 3) if p9999 > 0 else 0.0}


def observed_tensors(graph: Graph) -> list[str]:
    """Activation tensors that get their own observed range (an integer input has none)."""
    names = [name for name in graph.inputs if not graph.tensors[name].is_integer]
    for node in graph.nodes:
        if is_stream(node) or node.op == "channels":  # float, or ranged from its channels (stream.py)
            continue
        if node.op not in SHARES_INPUT_PARAMS and node.op not in FIXED_OUTPUT_PARAMS and node.op not in TABLE_LOOKUPS:
            names.extend(name for name in node.outputs if not graph.tensors[name].is_integer)
    return names


def collect_stats(
    graph: Graph, samples: np.ndarray, config: QuantConfig, progress: Progress | None = None, channelwise: list[str] | None = None
) -> tuple[dict[str, TensorStats], dict[str, ChannelRange]]:
    """Min, max and histogram of every observed tensor, and the per-channel minima and maxima
    of the ``channelwise`` ones, in one pass over the samples.

    The float graph runs in ONNX Runtime with the observed tensors as extra outputs: on
    CPU it is several times faster than eager PyTorch for mobile networks, and it is the
    same arithmetic as the fp32 artifact.
    """
    import onnxruntime as ort

    from edgetune.evaluate.runtime import feeds, session_options
    from edgetune.export.config import input_names
    from edgetune.export.onnx.writer import build_onnx

    wanted = observed_tensors(graph)
    channelwise = channelwise or []
    with step("fp32 ONNX with every activation summarized"):
        model, exposed = build_onnx(graph, quantized=False, expose=[*wanted, *channelwise])
        inputs = input_names(graph)
        ranks = {exposed[n]: len(graph.tensors[n].shape) for n in wanted if exposed[n] not in inputs}
        summaries = add_summaries(model, {value: ranks[value] for value in sorted(ranks)}, SAMPLE_PER_BATCH)
        pairs = add_channel_summaries(model, {exposed[n]: len(graph.tensors[n].shape) for n in channelwise})
        blob = model.SerializeToString()
    # No spinning: on a core shared with other work, spinning threads burn the slices they wait in.
    with step("onnxruntime session"):
        session = ort.InferenceSession(blob, session_options(spin=False), providers=["CPUExecutionProvider"])
    fetch = [name for s in summaries.values() for name in (s.low, s.high, s.kept)]
    fetch += [name for pair in pairs.values() for name in pair]
    stats = {name: TensorStats() for name in wanted}
    spans: dict[str, ChannelRange] = {}
    batch_size = min(config.batch_size, CALIBRATION_BATCH)
    starts = range(0, len(samples), batch_size)
    for done, start in enumerate(starts, 1):
        batch = np.ascontiguousarray(samples[start : start + batch_size])
        with step("onnxruntime runs"):
            given = feeds(inputs, batch)
            values = dict(zip(fetch, session.run(fetch, given)))
        with step("histograms"):
            for name in wanted:
                if exposed[name] in given:
                    stats[name].update(torch.from_numpy(given[exposed[name]]))
                else:
                    summary = summaries[exposed[name]]
                    stats[name].add(float(values[summary.low]), float(values[summary.high]), torch.from_numpy(values[summary.kept]))
            for name in channelwise:
                low, high = (values[n].astype(np.float64) for n in pairs[exposed[name]])
                seen = spans.get(name)
                spans[name] = (
                    ChannelRange(low, high) if seen is None else ChannelRange(np.minimum(seen.low, low), np.maximum(seen.high, high))
                )
        if progress is not None:
            progress(done, len(starts), "calibration")
    with step("histograms"):
        for tensor_stats in stats.values():
            tensor_stats.finish()
    return stats, spans


def choose_ranges(stats: dict[str, TensorStats], config: QuantConfig) -> dict[str, CalibrationRecord]:
    records = {}
    for name, tensor_stats in stats.items():
        ranges = {"minmax": METHODS["minmax"](tensor_stats)}
        if tensor_stats.hist.any():
            ranges["percentile"] = percentile_range(tensor_stats, config.percentile)
            ranges["mse"] = METHODS["mse"](tensor_stats)
        method = config.method
        if method == OUTPUT_METHOD:  # MSE's range until choose_by_output judges the tensor
            method = "mse" if "mse" in ranges else "minmax"
        records[name] = CalibrationRecord(name, method, ranges.get(method, ranges["minmax"]), ranges)
    return records


def assign_params(graph: Graph, records: dict[str, CalibrationRecord], config: QuantConfig) -> None:
    """Attach QParams to every activation, weight and bias in execution order."""
    for name in graph.inputs:
        if not graph.tensors[name].is_integer:
            graph.tensors[name].quant = params.activation_params(*records[name].chosen)
    shared: dict[str, QParams] = {}  # weight -> its parameters so far (the steps of a GRU read one weight)
    for node in graph.nodes:
        out = graph.tensors[node.outputs[0]]
        if is_stream(node) or out.is_integer:  # runs in float, its constants too; or integers (a mask)
            out.quant = None
            continue
        if node.op in TABLE_LOOKUPS:
            _quantize_operand_constants(graph, node.inputs[1:2])
            out.quant = graph.tensors[node.inputs[1]].quant
            continue
        if node.op in SHARES_INPUT_PARAMS:
            out.quant = graph.tensors[node.inputs[0]].quant
        elif node.op in FIXED_OUTPUT_PARAMS:
            out.quant = params.fixed_params(*FIXED_OUTPUT_PARAMS[node.op])
        else:
            out.quant = params.activation_params(*records[out.name].chosen)
        if node.op in WEIGHTED_OPS:
            _quantize_weights(graph, node.inputs, config, shared.get(node.inputs[1]))
            shared[node.inputs[1]] = graph.tensors[node.inputs[1]].quant  # type: ignore[assignment]
        elif node.op not in FLOAT_OPERANDS:
            _quantize_operand_constants(graph, node.inputs)
    settle_shared_weights(graph)


def settle_shared_weights(graph: Graph) -> None:
    """A weight read by several layers ends with the widest scales any of their biases needed:
    every bias grid is derived again from it (input scale x weight scale, TFLite's rule). Run
    after anything that may widen a weight for its bias (calibration, bias correction, QAT)."""
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            readers.setdefault(node.inputs[1], []).append(node)
    for nodes in readers.values():
        for node in nodes if len(nodes) > 1 else []:
            if len(node.inputs) > 2 and node.inputs[2]:
                weight_q, input_q = graph.tensors[node.inputs[1]].quant, graph.tensors[node.inputs[0]].quant
                bias = graph.tensors[node.inputs[2]]
                if weight_q is None or input_q is None or bias.quant is None:
                    continue  # a layer the fallback keeps in float
                grid = params.bias_params(input_q, weight_q)
                bias.quant = QParams(grid.scale, grid.zero_point, bias.quant.dtype, grid.axis)  # int64 under int16 activations


def weight_levels_by_layer(graph: Graph, bits: int, layer_bits: tuple[tuple[str, int], ...] = ()) -> dict[str, int]:
    """Level range per weight tensor. ``layer_bits`` sets some layers' (or modules') bits, in
    order, over every rule below (mixed precision, as a search or HAQ chooses it). Below 8
    bits, the other layers keep 8 in these cases:

    - the first and last weighted layers, as is usual (AdaRound, section 5): the first sees
      raw input with few channels, the last decides the classes;
    - depthwise layers (one input channel per group): a channel of a 3x3 or 5x5 depthwise
      kernel has 9 or 25 weights, too few for one 4-bit grid to fit, and all depthwise layers
      together hold a few percent of a mobile network's weights. On EfficientNet-Lite2 W4A8
      with AdaRound this lifts top-1 agreement from 90.9% to 95.5% for 4% more weight bits.
    """
    weighted = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    levels = {node.inputs[1]: params.weight_levels(bits) for node in weighted}
    if bits < 8 and weighted:
        for node in weighted:
            if node is weighted[0] or node is weighted[-1] or depthwise_multiplier(graph, node) > 0:
                levels[node.inputs[1]] = params.WEIGHT_MAX
    weights = {node.name: node.inputs[1] for node in weighted}
    for name, chosen in layer_bits:
        for layer in select(list(weights), (name,), "quantize.layer_bits"):
            levels[weights[layer]] = params.weight_levels(chosen)
    return levels


def _quantize_weights(graph: Graph, inputs: list[str], config: QuantConfig, earlier: QParams | None = None) -> None:
    """A layer's weight and bias parameters; ``earlier`` is what another layer reading the same
    weight chose, to widen from rather than start over."""
    x, weight_name = inputs[0], inputs[1]
    weight = graph.const(weight_name)
    input_q = graph.tensors[x].quant
    assert input_q is not None, "inputs are quantized before their consumers"
    levels = params.levels_of(graph.meta, weight_name)
    # 4-bit weights: a searched range (clipping the few largest) beats the largest magnitude.
    weight_q = earlier or params.weight_params(weight, config.per_channel, axis=0, levels=levels, search=levels < params.WEIGHT_MAX)
    if len(inputs) > 2:
        bias = graph.const(inputs[2])
        weight_q = params.widen_for_bias(weight_q, bias, float(input_q.scale[0]))
        graph.tensors[inputs[2]].quant = params.bias_params(input_q, weight_q)
    tensor = graph.tensors[weight_name]
    tensor.quant = weight_q
    if levels < params.WEIGHT_MAX:  # the int8 model's weights clipped to the searched range; fp32 keeps them whole
        tensor.qdata = params.clip_to_range(tensor.int8_source, weight_q, levels)  # type: ignore[arg-type]


def requantize_bias(graph: Graph, node: Node) -> None:
    """Derive a layer's bias parameters again after its bias changed; the weight parameters
    stay unless the new bias would overflow int32 on its grid."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return
    weight, bias = graph.tensors[node.inputs[1]], graph.tensors[node.inputs[2]]
    input_q = graph.tensors[node.inputs[0]].quant
    assert weight.quant is not None and input_q is not None and bias.int8_source is not None
    weight.quant = params.widen_for_bias(weight.quant, bias.int8_source, float(input_q.scale[0]))
    bias.quant = params.bias_params(input_q, weight.quant)


def _quantize_operand_constants(graph: Graph, inputs: list[str]) -> None:
    """Constant operands of elementwise ops (a scale factor, an offset) as per-tensor int8."""
    for name in inputs:
        tensor = graph.tensors.get(name)
        if tensor is not None and tensor.data is not None and tensor.quant is None:
            tensor.quant = params.activation_params(float(tensor.data.min()), float(tensor.data.max()))


def unify_concat_ranges(graph: Graph, records: dict[str, CalibrationRecord]) -> None:
    """TFLite int8 CONCATENATION needs one scale for all its inputs and its output: give
    them all the union of their ranges, before any parameters are derived from them. An input
    made by an op that shares its input's parameters (a resize, a reshape, a pool) is its
    source's range; concatenations that share a tensor share one range."""
    producers = graph.producers()

    def owner(name: str) -> str:
        node = producers.get(name)
        while node is not None and node.op in SHARES_INPUT_PARAMS:
            name = node.inputs[0]
            node = producers.get(name)
        return name

    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for node in (n for n in graph.nodes if n.op == "concat"):
        members = [find(owner(name)) for name in [*node.inputs, *node.outputs] if owner(name) in records]
        for name in members[1:]:
            parent[find(name)] = find(members[0])
    classes: dict[str, list[CalibrationRecord]] = {}
    for name in parent:
        classes.setdefault(find(name), []).append(records[name])
    for shared in classes.values():
        union = (min(r.chosen[0] for r in shared), max(r.chosen[1] for r in shared))
        for record in shared:
            record.chosen = union


@timed("calibration")
def calibrate(graph: Graph, samples: np.ndarray, config: QuantConfig, progress: Progress | None = None) -> list[CalibrationRecord]:
    """Observe ``samples`` and set quantization parameters on ``graph`` in place."""
    levels = weight_levels_by_layer(graph, config.weight_bits, config.layer_bits)  # AdaRound and QAT keep to these
    graph.meta["weight_levels"] = levels
    graph.meta["weight_bits"] = 4 if any(level < params.WEIGHT_MAX for level in levels.values()) else 8
    isolate_stream(graph, mask_only=config.stream == "off")
    with step("observe"):
        stats, spans = collect_stats(graph, samples, config, progress, channel_points(graph))
    if config.stream in ("split", "smooth"):
        split_outliers(graph, spans, smooth=config.stream == "smooth")
    with step("ranges"):
        records = choose_ranges(stats, config)
        pointed = point_ranges(graph, spans)
        for name, chosen in pointed.items():  # min/max: see stream.py
            records[name] = CalibrationRecord(name, "minmax", chosen, {"minmax": chosen})
    if config.method == OUTPUT_METHOD:
        choose_by_output(graph, records, samples, progress)
    with step("ranges"):
        unify_concat_ranges(graph, records)
        for name, record in records.items():
            record.audit = audit(stats[name], record.chosen) if name in stats and name not in pointed else {}
    with step("parameters"):
        assign_params(graph, records, config)
    check_input_resolution(graph, samples)
    return [records[name] for name in observed_tensors(graph) + [n for n in records if n not in stats]]


def check_input_resolution(graph: Graph, samples: np.ndarray) -> None:
    """Refuse calibration data whose largest values dwarf the rest: the int8 input step then
    rounds most non-zero inputs to zero, and the artifacts would compute nothing useful (a lone
    1e30 among values near 1, say). Most such data has a preprocessing bug."""
    quant = graph.tensors[graph.inputs[0]].quant
    if quant is None or quant.scale.size != 1:
        return
    magnitudes = np.abs(samples[samples != 0])
    if magnitudes.size == 0:
        return
    lost = float(np.mean(magnitudes < float(quant.scale[0]) / 2))
    if lost > 0.5:
        raise InputError(
            f"the calibration data reaches {float(magnitudes.max()):.3g}, so far beyond its other values that int8 rounds"
            f" {lost:.0%} of the non-zero inputs to zero",
            "remove the outliers or fix the data's preprocessing",
        )
