"""Training memory: the process's resident set sampled during the stage, and a planner that
fits the fine-tune into a budget by choosing the batch size, gradient checkpointing and
freezing input-side layers.

The budget counts what the stage adds: peak RSS during the stage minus RSS just before it.
The planner's estimate is deliberately simple (parameters with their gradient, optimizer
state and best copy; per-sample activations kept for the backward pass), with factors
measured on MobileNetV2 at 96x96 on an x86 host (bench/recover.py prints both); the sampled
peak is what the report states, and the benchmark checks it against the budget.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

from edgetune.ir.graph import WEIGHTED_OPS, Graph

FLOAT = 4
# Bytes per trainable parameter: value, gradient, two Adam moments, the best copy (two while
# a new best replaces it), and the optimizer's temporaries.
PER_PARAMETER = 8 * FLOAT
# Per sample, training holds about this many float copies of each activation downstream of a
# trainable layer (saved outputs, masks, gradients in flight); QAT adds fake-quant masks.
ACTIVATION_COPIES = {False: 2.0, True: 4.0}
# Gradient checkpointing in about sqrt(nodes) segments keeps this share of that.
CHECKPOINTED = {False: 0.8, True: 0.6}
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
    checkpointing: bool  # gradient checkpointing
    estimate: int  # bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "frozen_input_layers": self.frozen_inputs,
            "gradient_checkpointing": self.checkpointing,
            "estimate_bytes": self.estimate,
        }


def checkpoint_segments(graph: Graph) -> int:
    return max(2, round(math.sqrt(len(graph.nodes))))


# Ops whose output autograd never keeps for their own backward pass, and which add no tensor
# that another op's backward keeps apart from their input's: views and copies of layout
# (reshape, transpose, slices), and sums (a residual add's gradient passes through). A
# transformer is a third to a half such ops by activation size (all-MiniLM-L6-v2 at 64 tokens:
# transposes 14%, residual and mask adds 12%, reshapes 11%), a CNN a few percent. Counting
# them over-predicted MiniLM's measured training state 2.2x (1.6x without them). The process's
# estimate (estimate() below) still counts them: its peak RSS also holds what the forward pass
# computes and frees, which the allocator keeps.
UNSAVED = frozenset({"reshape", "transpose", "slice", "expand", "concat", "pad", "cast", "compare", "add", "sub"})


def _kept(graph: Graph, node: Any) -> int:
    """Activation elements per sample that ``node`` adds to what the backward pass keeps."""
    return 0 if node.op in UNSAVED else math.prod(graph.tensors[node.outputs[0]].shape[1:])


def _per_sample(graph: Graph, after: int) -> int:
    """Activation elements per sample from the ``after``-th weighted layer on (autograd keeps those)."""
    seen, elements = 0, 0
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            seen += 1
        if seen > after:  # every op: the process also holds what is computed and freed (the allocator keeps it)
            elements += math.prod(graph.tensors[node.outputs[0]].shape[1:])
    return elements


def estimate(graph: Graph, batch: int, frozen_inputs: int, qat: bool, teacher: bool, checkpointing: bool = False) -> int:
    layers = [node for node in graph.nodes if node.op in WEIGHTED_OPS]
    trainable = sum(graph.const(name).size for node in layers[frozen_inputs:] for name in node.inputs[1:] if name)
    copies = ACTIVATION_COPIES[qat] * (CHECKPOINTED[qat] if checkpointing else 1.0)
    activations = int(_per_sample(graph, frozen_inputs) * copies * FLOAT * batch)
    # Forward passes without gradients (the teacher's, validation in chunks of 2 x batch) keep
    # only a few activations alive at once: the widest, its input and a temporary.
    widest = max(math.prod(graph.tensors[n.outputs[0]].shape[1:]) for n in graph.nodes) * FLOAT
    inference = widest * 3 * 2 * batch
    if teacher:
        inference += widest * 3 * batch
    return trainable * PER_PARAMETER + max(activations, inference) + OVERHEAD


def plan(graph: Graph, budget: int, batch_size: int, qat: bool, teacher: bool) -> MemoryPlan:
    """The largest batch, then the fewest frozen layers, that fit ``budget``.

    Each batch size from ``batch_size`` down to MIN_BATCH (halving) is tried without, then with
    gradient checkpointing; then input-side layers freeze one by one; then the batch shrinks
    to 1. If nothing fits, the smallest configuration is returned and the report shows its
    estimate above the budget.
    """
    layers = sum(1 for node in graph.nodes if node.op in WEIGHTED_OPS)
    batches = [b for b in (batch_size >> i for i in range(16)) if b >= 1]
    small = min(MIN_BATCH, batch_size)
    candidates = [(b, 0, ckpt) for b in batches if b >= small for ckpt in (False, True)]
    candidates += [(small, frozen, True) for frozen in range(1, layers)]
    candidates += [(b, max(0, layers - 1), True) for b in batches if b < small]
    for batch, frozen, ckpt in candidates:
        needed = estimate(graph, batch, frozen, qat, teacher, ckpt)
        if needed <= budget:
            return MemoryPlan(batch, frozen, ckpt, needed)
    batch, frozen, ckpt = candidates[-1]
    return MemoryPlan(batch, frozen, ckpt, estimate(graph, batch, frozen, qat, teacher, ckpt))


# Parameter-efficient strategies (strategy.py: bias, lora:R, sparse:MEMORY) are planned on the
# training state itself, the way an on-device training engine counts it (MCUNetV3's 256 KB),
# not on the process: what a sparse:MEMORY budget bounds, and what TensorMemory measures.
# - each trained parameter: its value, gradient and two Adam moments;
# - a layer whose weight (or a low-rank or sparse update of it) trains keeps its input for the
#   weight gradient: one float per input element and sample;
# - the gradient flows back to the earliest layer that trains anything, and every activation
#   from there on keeps about BACKPROP_COPIES floats per element and sample (the saved outputs
#   and masks of the nonlinearities); twice that under QAT (the fake quantizers' masks).
# The frozen weights, the interpreter and the allocator are the process's, not training's:
# process_estimate adds them for --finetune-memory, which bounds the process's RSS.
STATE_PER_PARAMETER = 4 * FLOAT
BACKPROP_COPIES = 1.0
LOSS_COPIES = 2.0
FROZEN_PER_PARAMETER = 2 * FLOAT  # a frozen weight: the runner's copy and the best model's


@dataclass(frozen=True)
class LayerCost:
    """A conv or linear layer as the memory model sees it."""

    name: str
    index: int  # position in graph.nodes
    channels: int  # output channels (axis 0 of the weight)
    per_channel: int  # weight elements per output channel
    bias: int  # bias elements (0: none)
    inputs: int  # input activation elements per sample

    @property
    def weights(self) -> int:
        return self.channels * self.per_channel


def layer_costs(graph: Graph) -> list[LayerCost]:
    costs = []
    for index, node in enumerate(graph.nodes):
        if node.op in WEIGHTED_OPS:
            weight = graph.const(node.inputs[1])
            bias = graph.const(node.inputs[2]).size if len(node.inputs) > 2 and node.inputs[2] else 0
            inputs = math.prod(graph.tensors[node.inputs[0]].shape[1:])
            costs.append(LayerCost(node.name, index, weight.shape[0], weight.size // weight.shape[0], bias, inputs))
    return costs


# Ops that keep more than their output for the backward pass, in floats per output element:
# max pooling keeps the int64 position of each maximum.
SAVED_EXTRA = {"maxpool2d": 2.0}


def _after(graph: Graph, index: int) -> float:
    """Activation floats per sample kept from graph.nodes[index:] on (the backward pass's reach)."""
    return sum(_kept(graph, node) * (1.0 + SAVED_EXTRA.get(node.op, 0.0)) for node in graph.nodes[index:])


@dataclass(frozen=True)
class Trained:
    """What a parameter-efficient run trains: parameters per layer, and the layers whose input
    is kept for a weight gradient."""

    parameters: dict[str, int]  # layer -> trained parameter elements (weights, updates, bias)
    saved_inputs: frozenset[str]
    derived: frozenset[str] = frozenset()  # layers whose weight is computed each step (weight plus update)


def efficient_estimate(graph: Graph, costs: list[LayerCost], trained: Trained, batch: int, qat: bool) -> int:
    """Bytes of training state of a parameter-efficient fine-tune (see the model above)."""
    by_name = {cost.name: cost for cost in costs}
    first = min((by_name[name].index for name in trained.parameters), default=len(graph.nodes))
    copies = BACKPROP_COPIES * (2.0 if qat else 1.0)
    saved = copies * _after(graph, first) + sum(by_name[name].inputs for name in trained.saved_inputs)
    if trained.parameters:  # the loss keeps the outputs and its softmax
        saved += LOSS_COPIES * math.prod(graph.tensors[graph.outputs[0]].shape[1:])
    activations = batch * FLOAT * saved
    # A weight computed each step (an update added; under QAT, fake-quantized) is kept for the
    # backward pass like an activation, once whatever the batch.
    derived = sum(c.weights for c in costs if c.name in trained.derived or qat and c.index >= first) * FLOAT
    return sum(trained.parameters.values()) * STATE_PER_PARAMETER + int(activations) + derived


def process_estimate(graph: Graph, costs: list[LayerCost], trained: Trained, batch: int, qat: bool, teacher: bool) -> int:
    """What the process adds for the same run (--finetune-memory's measure): the training state,
    the frozen weights' copies, the best model's copy of what trains, inference passes, slack."""
    state = efficient_estimate(graph, costs, trained, batch, qat)
    frozen = sum(cost.weights + cost.bias for cost in costs) * FROZEN_PER_PARAMETER
    widest = max(math.prod(graph.tensors[n.outputs[0]].shape[1:]) for n in graph.nodes) * FLOAT
    inference = widest * 3 * (2 + int(teacher)) * batch
    return max(state, inference) + frozen + sum(trained.parameters.values()) * FLOAT + OVERHEAD


class TensorMemory:
    """The training state measured tensor by tensor on a step: what autograd saves for the
    backward pass (each storage once, the model's own weights aside), the gradients, the
    optimizer's state and the values that train. Unlike the process's RSS, it does not depend
    on the allocator or on what ran before in the process."""

    def __init__(self, constants: list[Any]) -> None:
        self.excluded = {int(t.untyped_storage().data_ptr()) for t in constants}
        self.saved: dict[int, int] = {}
        self.saved_peak = 0  # the largest micro-batch's saved tensors
        self.peak = 0

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        pointer = int(storage.data_ptr())
        if pointer not in self.excluded:
            self.saved[pointer] = int(storage.nbytes())
        return tensor

    def recording(self) -> Any:
        """A context in which the tensors autograd saves are counted (torch's saved-tensor hooks)."""
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, _unchanged)

    def chunk_done(self) -> None:
        """A micro-batch's backward pass is over: its saved tensors are freed."""
        self.saved_peak = max(self.saved_peak, sum(self.saved.values()))
        self.saved.clear()

    def finish(self, params: list[Any], optimizer: Any) -> None:
        """After the optimizer's step: the step's total, kept when it is the largest so far."""
        trained = [p for p in params if p.requires_grad]
        values = sum(p.numel() * p.element_size() for p in trained)
        grads = sum(p.grad.numel() * p.grad.element_size() for p in trained if p.grad is not None)
        state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.dim())
        self.chunk_done()
        self.peak = max(self.peak, self.saved_peak + values + grads + state)
        self.saved_peak = 0


def _unchanged(tensor: Any) -> Any:
    return tensor
