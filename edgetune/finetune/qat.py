"""Quantization-aware training on the exporters' own quantizer, with learned step sizes.

Every tensor the int8 artifacts quantize is fake-quantized here with the integer semantics
of ``GraphRunner(quantized=True)`` (round half to even, saturate), starting from the
calibrated parameters. Rounding passes gradients straight through, and each scale is learned
with the LSQ gradient (Esser et al., "Learned Step Size Quantization", ICLR 2020,
arXiv:1902.08153), scaled by ``1 / sqrt(N * Qmax)``. A scale is stored as its logarithm: it
stays positive, and an adaptive optimizer moves it by a relative step.

The constraints of the int8 specification hold throughout: zero points stay at their
calibrated values, weights are symmetric in [-127, 127], ops that pass values through
(reshape, pooling, pad, transpose) share their input's scale, a concatenation's inputs and
output share one scale, softmax, sigmoid and tanh keep their fixed output parameters, and a
bias is quantized with input scale x weight scale, as the exporters derive it. ``commit``
writes the learned scales into the graph's QParams bit for bit, so the exported ONNX and
TFLite models carry exactly the scales that were trained.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgetune.errors import InputError
from edgetune.finetune.peft import Peft
from edgetune.ir import quant as params
from edgetune.ir.graph import WEIGHTED_OPS, Graph, QParams
from edgetune.ir.torch_exec import GraphRunner, Observer, fake_quant
from edgetune.quantize.calibrate import FIXED_OUTPUT_PARAMS, SHARES_INPUT_PARAMS, settle_shared_weights

SCALE_PREFIX = "scale:"


def _activation_keys(graph: Graph) -> dict[str, str]:
    """Each activation with a learned scale, mapped to the tensor whose scale it uses."""
    key: dict[str, str] = {name: name for name in graph.inputs}
    for node in graph.nodes:
        out = node.outputs[0]
        if node.op in FIXED_OUTPUT_PARAMS:
            continue
        if node.op in SHARES_INPUT_PARAMS:
            if node.inputs[0] in key:
                key[out] = key[node.inputs[0]]
            continue
        key[out] = out
        if node.op == "concat":  # one scale for the inputs and the output
            for name in node.inputs:
                old = key.get(name)
                for tensor, owner in list(key.items()):
                    if old is not None and owner == old:
                        key[tensor] = out
    return {name: owner for name, owner in key.items() if _learnable(graph.tensors[name].quant)}


def _learnable(q: QParams | None) -> bool:
    return q is not None and q.dtype == "int8" and q.axis is None


class QatRunner(GraphRunner):
    """Runs a calibrated graph with learnable quantization; ``parameters_by_name`` lists what trains."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.calibrated:
            raise InputError(
                "quantization-aware training needs a calibrated graph", "calibrate before QAT (edgetune does this in compress)"
            )
        self.key = _activation_keys(graph)
        self.log_scales: dict[str, nn.Parameter] = {}
        self.zero_points: dict[str, torch.Tensor] = {}
        self.grad_factor: dict[str, float] = {}
        for owner in dict.fromkeys(self.key.values()):
            if owner not in self.log_scales:
                q = graph.tensors[owner].quant
                assert q is not None
                self.log_scales[owner] = nn.Parameter(torch.log(torch.from_numpy(q.scale.copy())))
                self.zero_points[owner] = torch.from_numpy(q.zero_point.astype(np.float32))
                self.grad_factor[owner] = 1.0 / math.sqrt(math.prod(graph.tensors[owner].shape[1:]) * q.qmax)
        self.weights: dict[str, int | None] = {}  # weight tensor -> channel axis (None: per tensor)
        self.biases: dict[str, tuple[str, str]] = {}  # bias tensor -> (input activation, weight)
        for node in graph.nodes:
            if node.op in WEIGHTED_OPS and not node.in_float:
                self._add_weighted(node.inputs)
        self.fixed = {
            name: fake_quant(value, graph.tensors[name].quant)  # type: ignore[arg-type]
            for name, value in self.constants.items()
            if graph.tensors[name].quant is not None and name not in self.weights and name not in self.biases
        }
        # Training starts from the values the int8 model holds (AdaRound's rounding, corrected biases).
        self.trainable = {
            name: nn.Parameter(torch.from_numpy(np.array(graph.tensors[name].int8_source, np.float32)))
            for name in [*self.weights, *self.biases]
        }
        self.constants.update(self.trainable)

    def levels(self, weight: str) -> int:
        """Weights use [-127, 127], the int8 specification's symmetric range, or [-7, 7] at 4 bits."""
        return params.levels_of(self.graph.meta, weight)

    def _add_weighted(self, inputs: list[str]) -> None:
        weight = inputs[1]
        q = self.graph.tensors[weight].quant
        assert q is not None
        self.weights[weight] = q.axis
        self.log_scales[weight] = nn.Parameter(torch.log(torch.from_numpy(q.scale.copy())))
        self.zero_points[weight] = torch.zeros(q.scale.shape)
        per_scale = self.graph.tensors[weight].data.size // q.scale.size  # type: ignore[union-attr]
        self.grad_factor[weight] = 1.0 / math.sqrt(per_scale * self.levels(weight))
        if len(inputs) > 2:
            self.biases[inputs[2]] = (inputs[0], weight)

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """Weights and biases under their tensor names, then the log scales as ``scale:<tensor>``."""
        updates = self.peft.params if self.peft is not None else {}
        return {**self.trainable, **{SCALE_PREFIX + name: p for name, p in self.log_scales.items()}, **updates}

    def scale(self, owner: str) -> torch.Tensor:
        return torch.exp(self.log_scales[owner])

    peft: Peft | None = None  # parameter-efficient updates added to the weights

    def constant(self, name: str) -> torch.Tensor:
        if name in self.weights:
            base = self.constants[name]
            return self._weight(name, base if self.peft is None else self.peft.weight(name, base))
        if name in self.biases:
            x, weight = self.biases[name]
            bound = params.INT64_BIAS_MAX if self.graph.tensors[name].quant.dtype == "int64" else params.INT32_MAX  # type: ignore[union-attr]
            return _bias_on_grid(self.constants[name], self._input_scale(x), self.scale(weight).detach(), bound)
        return self.fixed.get(name, self.constants[name])

    def _input_scale(self, name: str) -> torch.Tensor:
        if name in self.key:
            return self.scale(self.key[name]).detach()
        q = self.graph.tensors[name].quant
        assert q is not None
        return torch.from_numpy(q.scale.copy())

    def _weight(self, name: str, value: torch.Tensor) -> torch.Tensor:
        axis = self.weights[name]
        if axis is None:
            return torch._fake_quantize_learnable_per_tensor_affine(
                value, self.scale(name), self.zero_points[name], -self.levels(name), self.levels(name), self.grad_factor[name]
            )
        return torch._fake_quantize_learnable_per_channel_affine(
            value, self.scale(name), self.zero_points[name], axis, -self.levels(name), self.levels(name), self.grad_factor[name]
        )

    def _finish(self, name: str, value: torch.Tensor, observe: Observer | None) -> torch.Tensor:
        q = self.graph.tensors[name].quant
        owner = self.key.get(name)
        if owner is not None and q is not None:
            value = torch._fake_quantize_learnable_per_tensor_affine(
                value, self.scale(owner), self.zero_points[owner], q.qmin, q.qmax, self.grad_factor[owner]
            )
        elif q is not None:
            value = fake_quant(value, q)
        if observe is not None:
            observe(name, value)
        return value

    def _scale_value(self, owner: str, log_scale: torch.Tensor) -> np.ndarray:
        """A learned scale; one that never moved (frozen under a parameter-efficient strategy)
        keeps its calibrated value bit for bit rather than exp(log(scale))."""
        q = self.graph.tensors[owner].quant
        assert q is not None
        if torch.equal(log_scale, torch.log(torch.from_numpy(q.scale.copy()))):
            return q.scale.copy()
        return torch.exp(log_scale).numpy()

    def commit(self, values: dict[str, torch.Tensor]) -> int:
        """Write trained weights and scales (``parameters_by_name`` keys) into the graph.

        Returns how many weight scales had to widen so that a bias fits int32 (0 normally:
        then the artifacts reproduce the trained model's quantization exactly).
        """
        scales = {
            name[len(SCALE_PREFIX) :]: self._scale_value(name[len(SCALE_PREFIX) :], v)
            for name, v in values.items()
            if name.startswith(SCALE_PREFIX)
        }
        for name, owner in self.key.items():
            q = self.graph.tensors[name].quant
            assert q is not None
            self.graph.tensors[name].quant = QParams(scales[owner], q.zero_point, q.dtype, q.axis)
        widened = 0
        for name, axis in self.weights.items():
            scale = np.maximum(scales[name], params.MIN_SCALE)
            data = values[name].numpy().astype(np.float32)
            # Values beyond the grid were clamped in training; clamp them here so that the
            # exporters' rounding can never reach -128.
            bound = scale.reshape([-1] + [1] * (data.ndim - 1)) * self.levels(name) if axis is not None else scale * self.levels(name)
            self.graph.tensors[name].data = np.clip(data, -bound, bound).astype(np.float32)
            self.graph.tensors[name].qdata = None  # training started from the int8 values and replaced them
            self.graph.tensors[name].quant = QParams(scale, np.zeros(scale.shape, np.int64), "int8", axis)
        for name, (x, weight) in self.biases.items():
            self.graph.tensors[name].data = values[name].numpy().astype(np.float32)
            self.graph.tensors[name].qdata = None
            input_q, weight_q = self.graph.tensors[x].quant, self.graph.tensors[weight].quant
            assert input_q is not None and weight_q is not None
            old = self.graph.tensors[name].quant
            if old is not None and old.dtype == "int64":  # a 16x8 layer (int16 fallback): its int64 bias needs no room
                bias_q = params.bias_params(input_q, weight_q)
                self.graph.tensors[name].quant = QParams(bias_q.scale, bias_q.zero_point, "int64", bias_q.axis)
                continue
            wide = params.widen_for_bias(weight_q, self.graph.tensors[name].data, float(input_q.scale[0]))  # type: ignore[arg-type]
            widened += int(wide is not weight_q)
            self.graph.tensors[weight].quant = wide
            self.graph.tensors[name].quant = params.bias_params(input_q, wide)
        settle_shared_weights(self.graph)  # one step's widening reaches the steps that share the weight
        return widened


def _bias_on_grid(bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor, bound: int) -> torch.Tensor:
    """The bias rounded to its int32 (or int64) grid (scale = input scale x weight scale,
    computed in float64 as the exporters do), with a straight-through gradient."""
    scale = (input_scale.double() * weight_scale.double()).float()
    levels = torch.clamp(torch.round(bias.detach() / scale), -bound, bound)
    return bias + (levels * scale - bias).detach()
