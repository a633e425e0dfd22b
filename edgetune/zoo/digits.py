"""A small CNN for scikit-learn's 8x8 digits, trained reproducibly in seconds on the CPU.

It covers the ops edge CNNs are made of: conv, depthwise conv, BatchNorm, ReLU and ReLU6,
a residual add, max and average pooling, and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.zoo.layers import ConvBNAct


class InvertedResidualLite(nn.Module):
    """Depthwise 3x3 (ReLU6), pointwise 1x1 (linear), residual add, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(channels, channels, 3, groups=channels, act=nn.ReLU6)
        self.pointwise = ConvBNAct(channels, channels, 1, act=None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.pointwise(self.depthwise(x)))


class DigitsCNN(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, 16, 3)
        self.block1 = InvertedResidualLite(16)
        self.expand = ConvBNAct(16, 32, 3)
        self.pool = nn.MaxPool2d(2)
        self.block2 = InvertedResidualLite(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = self.block2(self.pool(self.expand(x)))
        return self.head(x)


def digits_cnn() -> nn.Module:
    return DigitsCNN()
