"""EfficientNet-Lite-style network (the "lite" variants of Tan & Le, 2019).

Lite drops squeeze-excite, uses ReLU6 instead of swish and keeps stem and head fixed.
Padding follows the ports of the TF checkpoints: TF "SAME" as an explicit zero pad
followed by an unpadded convolution, computed for a fixed input size.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.zoo.layers import SameConvBNAct, make_divisible

# expansion, kernel, stride, output channels, repeats (EfficientNet-B0 stages)
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, in_size: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(SameConvBNAct(cin, hidden, 1, 1, in_size))
        layers += [
            SameConvBNAct(hidden, hidden, kernel, stride, in_size, groups=hidden),
            SameConvBNAct(hidden, cout, 1, 1, -(-in_size // stride), act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, depth: float = 1.0, image_size: int = 224) -> None:
        super().__init__()
        size = image_size
        layers: list[nn.Module] = [SameConvBNAct(3, 32, 3, 2, size)]
        size = -(-size // 2)
        cin = 32
        for index, (expand, kernel, stride, channels, repeats) in enumerate(_STAGES):
            cout = make_divisible(channels * width)
            # Lite keeps the first and last stage at one block whatever the depth multiplier.
            count = repeats if index in (0, len(_STAGES) - 1) else int(-(-repeats * depth // 1))
            for i in range(count):
                block_stride = stride if i == 0 else 1
                layers.append(MBConv(cin, cout, kernel, block_stride, expand, size))
                size = -(-size // block_stride)
                cin = cout
        layers.append(SameConvBNAct(cin, 1280, 1, 1, size))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
