"""The MLPerf Tiny reference CNNs: ResNet-8 (image classification) and DS-CNN (keyword spotting).

Shapes follow the MLPerf Tiny v1.0 Keras reference models; "same" padding is written as
TF computes it, so strided layers pad only at the end.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.zoo.layers import ConvBNAct, SameConvBNAct


class ResidualStack(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, in_size: int) -> None:
        super().__init__()
        self.conv1 = SameConvBNAct(cin, cout, 3, stride, in_size, act=nn.ReLU)
        self.conv2 = ConvBNAct(cout, cout, 3, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3)
        self.stacks = nn.Sequential(ResidualStack(16, 16, 1, 32), ResidualStack(16, 32, 2, 32), ResidualStack(32, 64, 2, 16))
        self.head = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, num_classes), nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stacks(self.stem(x)))


class DSCNN(nn.Module):
    """DS-CNN for keyword spotting on 49x10 MFCC frames, 12 classes."""

    input_shape = (1, 49, 10)

    def __init__(self, num_classes: int = 12, channels: int = 64) -> None:
        super().__init__()
        # TF "SAME" for a 10x4 kernel, stride 2, on 49x10: rows (4, 5), columns (1, 1).
        self.stem = nn.Sequential(nn.ZeroPad2d((1, 1, 4, 5)), ConvBNAct(1, channels, (10, 4), 2, padding=0))
        blocks: list[nn.Module] = []
        for _ in range(4):
            blocks += [ConvBNAct(channels, channels, 3, groups=channels), ConvBNAct(channels, channels, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AvgPool2d((25, 5)), nn.Flatten(), nn.Linear(channels, num_classes), nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
