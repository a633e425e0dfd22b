"""Building blocks shared by the reference models."""

from __future__ import annotations

import torch
from torch import nn

from edgetune.ir.padding import same_padding


class ConvBNAct(nn.Sequential):
    """Conv2d, BatchNorm and an optional activation, padded like PyTorch (symmetric)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int] = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        padding: int | tuple[int, int] | None = None,
    ) -> None:
        ksize = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = padding if padding is not None else (ksize[0] // 2, ksize[1] // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, ksize, stride, pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SameConvBNAct(nn.Sequential):
    """TF "SAME" convolution as ports of TF checkpoints write it: zero pad, then unpadded conv.

    The padding is computed for a fixed input size, as the TF graph does for static shapes.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        in_size: int,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        before, after = same_padding(in_size, kernel, stride)
        layers: list[nn.Module] = []
        if before or after:
            layers.append(nn.ZeroPad2d((before, after, before, after)))
        layers += [
            nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def prepare_batchnorm(model: nn.Module) -> None:
    """What settling does to a model besides its tensors (a model whose settled tensors are
    loaded from the cache gets this too, so that it is the same model)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the settling batches


@torch.no_grad()
def settle_batchnorm(model: nn.Module, input_shape: tuple[int, ...], seed: int, batches: int = 2, batch_size: int = 8) -> None:
    """Give an untrained model realistic BatchNorm statistics.

    A freshly initialised network has running mean 0 and variance 1 everywhere, so deep
    activations explode or vanish. Running a few seeded random batches in training mode
    sets the statistics as training would, which keeps activation ranges plausible for
    quantization studies on untrained architectures.
    """
    gen = torch.Generator().manual_seed(seed)
    prepare_batchnorm(model)
    model.train()
    for _ in range(batches):
        model(torch.randn((batch_size, *input_shape), generator=gen))
    model.eval()
