"""Training memory: the process's resident set sampled during the stage, and a planner that
fits the fine-tune into a budget by choosing the batch size and freezing input-side layers.

The budget counts what the stage adds: peak RSS during the stage minus RSS just before it.
The planner's estimate is deliberately simple (parameters with their gradient, optimizer
state and best copy; per-sample activations kept for the backward pass); the sampled peak is
what the report states, and the benchmark checks it against the budget.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

from edgetune.ir.graph import Graph

FLOAT = 4
# Bytes kept per trainable parameter: value, gradient, two Adam moments, the best copy.
PER_PARAMETER = 5 * FLOAT
# Autograd keeps about this many copies of each activation downstream of a trainable layer
# (the output, the activation mask, the incoming gradient); QAT adds fake-quant masks.
ACTIVATION_COPIES = {False: 4, True: 6}
# Allocator slack and the interpreter's own transient buffers.
OVERHEAD = 24 * 2**20
MIN_BATCH = 8  # below this the planner freezes layers first


def rss_bytes() -> int:
    """The process's resident set size now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if os.uname().sysname == "Darwin" else peak * 1024)


class PeakRss:
    """Samples RSS on a background thread; ``delta`` is the peak minus RSS at start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = rss_bytes()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.baseline)


@dataclass(frozen=True)
class MemoryPlan:
    batch_size: int
    frozen_inputs: int  # input-side layers kept frozen to fit
    estimate: int  # bytes

    def to_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "frozen_input_layers": self.frozen_inputs, "estimate_bytes": self.estimate}


def _per_sample(graph: Graph, after: int) -> int:
    """Activation elements per sample from the ``after``-th weighted layer on (autograd keeps those)."""
    seen, elements = 0, 0
    for node in graph.nodes:
        if node.op in ("conv2d", "linear"):
            seen += 1
        if seen > after:
            elements += math.prod(graph.tensors[node.outputs[0]].shape[1:])
    return elements


def estimate(graph: Graph, batch: int, frozen_inputs: int, qat: bool, teacher: bool) -> int:
    layers = [node for node in graph.nodes if node.op in ("conv2d", "linear")]
    trainable = sum(graph.const(name).size for node in layers[frozen_inputs:] for name in node.inputs[1:] if name)
    activations = _per_sample(graph, frozen_inputs) * ACTIVATION_COPIES[qat] * FLOAT * batch
    if teacher:  # the teacher's forward pass keeps nothing, but its widest output lives a while
        activations += max(math.prod(graph.tensors[n.outputs[0]].shape[1:]) for n in graph.nodes) * FLOAT * batch * 2
    return trainable * PER_PARAMETER + activations + OVERHEAD


def plan(graph: Graph, budget: int, batch_size: int, qat: bool, teacher: bool) -> MemoryPlan:
    """The largest batch (halving from ``batch_size``) and fewest frozen layers that fit ``budget``.

    Batches shrink to MIN_BATCH first, then input-side layers freeze one by one, then the
    batch shrinks to 1; if nothing fits, the smallest configuration is returned and the
    report shows its estimate above the budget.
    """
    layers = sum(1 for node in graph.nodes if node.op in ("conv2d", "linear"))
    batches = [b for b in (batch_size >> i for i in range(16)) if b >= 1]
    candidates = [(b, 0) for b in batches if b >= MIN_BATCH]
    small = min(MIN_BATCH, batch_size)
    candidates += [(small, frozen) for frozen in range(1, layers)]
    candidates += [(b, layers - 1) for b in batches if b < small]
    for batch, frozen in candidates:
        needed = estimate(graph, batch, frozen, qat, teacher)
        if needed <= budget:
            return MemoryPlan(batch, frozen, needed)
    batch, frozen = candidates[-1] if candidates else (1, max(0, layers - 1))
    return MemoryPlan(batch, frozen, estimate(graph, batch, frozen, qat, teacher))
