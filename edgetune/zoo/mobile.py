"""MobileNetV3-small and ShuffleNetV2, written for edgetune from their papers (Howard et al.,
"Searching for MobileNetV3", 2019, table 2; Ma et al., "ShuffleNet V2", 2018, table 5), not
ported. They bring what MobileNetV2 does not: squeeze-and-excitation with hardsigmoid,
hardswish, a channel split (chunk), channel shuffle (view-transpose-view) and a ResNet-style
padded max-pool stem.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.zoo.layers import ConvBNAct


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """Channel attention: a spatial mean, two 1x1 convs, a hardsigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(weights))))


class InvertedResidualSE(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded))
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (kernel, expanded, out, squeeze-excite, activation, stride): MobileNetV3-small's bottlenecks.
_V3_SMALL = [
    (3, 16, 16, True, nn.ReLU, 2),
    (3, 72, 24, False, nn.ReLU, 2),
    (3, 88, 24, False, nn.ReLU, 1),
    (5, 96, 40, True, nn.Hardswish, 2),
    (5, 240, 40, True, nn.Hardswish, 1),
    (5, 240, 40, True, nn.Hardswish, 1),
    (5, 120, 48, True, nn.Hardswish, 1),
    (5, 144, 48, True, nn.Hardswish, 1),
    (5, 288, 96, True, nn.Hardswish, 2),
    (5, 576, 96, True, nn.Hardswish, 1),
    (5, 576, 96, True, nn.Hardswish, 1),
]


class MobileNetV3Small(nn.Module):
    input_shape = (3, 224, 224)

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for kernel, expanded, cout, se, act, stride in _V3_SMALL:
            blocks.append(InvertedResidualSE(cin, kernel, expanded, cout, se, act, stride))
            cin = cout
        blocks.append(ConvBNAct(cin, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """A stride-1 unit splits the channels and transforms one half; a stride-2 unit transforms
    two copies of the input. The halves are joined and shuffled."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride == 2:
            self.shortcut = nn.Sequential(ConvBNAct(cin, cin, 3, 2, groups=cin, act=None), ConvBNAct(cin, half, 1))
        source = cin if stride == 2 else half
        self.branch = nn.Sequential(
            ConvBNAct(source, half, 1), ConvBNAct(half, half, 3, stride, groups=half, act=None), ConvBNAct(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, changed = x.chunk(2, dim=1)
            y = torch.cat([kept, self.branch(changed)], dim=1)
        else:
            y = torch.cat([self.shortcut(x), self.branch(x)], dim=1)
        return channel_shuffle(y, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 0.5x: stages of 48, 96 and 192 channels (4, 8 and 4 units)."""

    input_shape = (3, 224, 224)

    def __init__(self, classes: int = 1000, widths: tuple[int, ...] = (24, 48, 96, 192, 1024)) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = widths[0]
        for cout, repeats in zip(widths[1:4], (4, 8, 4)):
            stages += [ShuffleUnit(cin, cout, 2), *(ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1))]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(cin, widths[4], 1)
        self.fc = nn.Linear(widths[4], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.stages(self.stem(x))).mean((2, 3)))
