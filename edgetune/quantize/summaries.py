"""Calibration's per-tensor summaries computed inside ONNX Runtime.

Calibration needs, of every observed activation and batch, its minimum, its maximum and an
even stride of its values (see :class:`edgetune.quantize.observers.TensorStats`). Fetching the
whole activations costs a copy of every one out of ONNX Runtime, a few hundred MB a batch on
a mobile network at 224x224, only to reduce them in PyTorch. Here the float model gets, for
each observed value, a ReduceMin, a ReduceMax and a strided Slice of its flattened values as
outputs instead: the same numbers (the minimum and maximum are exact either way; the slice
keeps the elements ``flat[::max(1, size // cap)]`` that the PyTorch path keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Summary:
    """The output names that carry one value's summary."""

    low: str
    high: str
    kept: str


def add_summaries(model: onnx.ModelProto, values: dict[str, int], cap: int) -> dict[str, Summary]:
    """Make ``model`` output a :class:`Summary` of each of ``values`` (activations it computes,
    name -> rank) in place of the values themselves, which stop being outputs unless one is the
    model's own output. ``cap``: at most about that many values kept per value and batch."""
    graph = model.graph
    constants = {"cap": np.array(cap, np.int64), "one": np.array(1, np.int64), "flat": np.array([-1], np.int64)}
    constants |= {"start": np.array([0], np.int64), "end": np.array([INT64_MAX], np.int64), "axis": np.array([0], np.int64)}
    prefix = "summary_"
    for name, array in constants.items():
        graph.initializer.append(numpy_helper.from_array(array, prefix + name))
    summaries: dict[str, Summary] = {}
    for index, (value, rank) in enumerate(values.items()):
        tag = f"{prefix}{index}_"
        summary = Summary(tag + "min", tag + "max", tag + "kept")
        graph.node.extend(_extremes(value, rank, tag, summary))
        graph.node.extend(
            [
                helper.make_node("Size", [value], [tag + "size"]),
                helper.make_node("Div", [tag + "size", prefix + "cap"], [tag + "ratio"]),
                helper.make_node("Max", [tag + "ratio", prefix + "one"], [tag + "stride"]),
                helper.make_node("Unsqueeze", [tag + "stride", prefix + "axis"], [tag + "steps"]),
                helper.make_node("Reshape", [value, prefix + "flat"], [tag + "flat"]),
                helper.make_node("Slice", [tag + "flat", prefix + "start", prefix + "end", prefix + "axis", tag + "steps"], [summary.kept]),
            ]
        )
        summaries[value] = summary
    kept_outputs = [o for o in graph.output if o.name not in summaries or o.name == graph.output[0].name]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    for summary in summaries.values():
        graph.output.extend(
            helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in (summary.low, summary.high, summary.kept)
        )
    return summaries


def _extremes(value: str, rank: int, tag: str, summary: Summary) -> list[onnx.NodeProto]:
    """The minimum and maximum of every element. ONNX Runtime reduces a whole tensor to one
    number on one thread; a tensor of rank 3 or more is first reduced along rows of its
    trailing axes (``Flatten(axis=2)``: one row per sample and channel), which it spreads over
    its threads, and then the row results: twice as fast on EfficientNet's activations, and
    the same numbers, as a minimum or maximum does not depend on the order it is taken in."""
    if rank < 3:
        return [
            helper.make_node("ReduceMin", [value], [summary.low], keepdims=0),
            helper.make_node("ReduceMax", [value], [summary.high], keepdims=0),
        ]
    return [
        helper.make_node("Flatten", [value], [tag + "rows"], axis=2),
        helper.make_node("ReduceMin", [tag + "rows"], [tag + "row_min"], keepdims=0, axes=[1]),
        helper.make_node("ReduceMax", [tag + "rows"], [tag + "row_max"], keepdims=0, axes=[1]),
        helper.make_node("ReduceMin", [tag + "row_min"], [summary.low], keepdims=0),
        helper.make_node("ReduceMax", [tag + "row_max"], [summary.high], keepdims=0),
    ]


def add_channel_summaries(model: onnx.ModelProto, values: dict[str, int]) -> dict[str, tuple[str, str]]:
    """Make ``model`` also output the per-channel (last axis) minimum and maximum of each of
    ``values`` (value name -> rank); returns the output names of each pair."""
    graph = model.graph
    pairs: dict[str, tuple[str, str]] = {}
    for index, (value, rank) in enumerate(values.items()):
        tag = f"channel_summary_{index}_"
        pair = (tag + "min", tag + "max")
        axes = list(range(rank - 1))
        graph.node.extend(
            [
                helper.make_node("ReduceMin", [value], [pair[0]], keepdims=0, axes=axes),
                helper.make_node("ReduceMax", [value], [pair[1]], keepdims=0, axes=axes),
            ]
        )
        graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in pair)
        pairs[value] = pair
    return pairs
