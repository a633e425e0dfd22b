"""Dense-prediction reference models, written for edgetune (not ports): a YOLO-style tiny
detector and a U-Net-style segmenter. They exercise what classifiers do not: SiLU, nearest and
bilinear upsampling, concatenated skips and necks, and a multi-scale head.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetune.zoo.layers import ConvBNAct


class CSPBlock(nn.Module):
    """Two 1x1 branches, one through two 3x3 convs, concatenated and fused (YOLOv5's C3 shape)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.main = nn.Sequential(
            ConvBNAct(cin, half, 1, act=nn.SiLU), ConvBNAct(half, half, 3, act=nn.SiLU), ConvBNAct(half, half, 3, act=nn.SiLU)
        )
        self.bypass = ConvBNAct(cin, half, 1, act=nn.SiLU)
        self.fuse = ConvBNAct(2 * half, cout, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.main(x), self.bypass(x)], dim=1))


class TinyDetector(nn.Module):
    """A two-scale YOLO-style detector for 64x64 inputs: backbone, an upsample-and-concat neck,
    and 1x1 heads predicting (box 4, objectness 1, classes) per cell, flattened and joined into
    one (N, 5 + classes, cells) output."""

    input_shape = (3, 64, 64)

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        outputs = 5 + classes
        self.stem = ConvBNAct(3, 16, 3, 2, act=nn.SiLU)  # 32x32
        self.stage1 = nn.Sequential(ConvBNAct(16, 32, 3, 2, act=nn.SiLU), CSPBlock(32, 32))  # 16x16
        self.stage2 = nn.Sequential(ConvBNAct(32, 64, 3, 2, act=nn.SiLU), CSPBlock(64, 64))  # 8x8
        self.reduce = ConvBNAct(64, 32, 1, act=nn.SiLU)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = CSPBlock(64, 32)  # the upsampled 8x8 features beside stage1's 16x16
        self.head_small = nn.Conv2d(32, outputs, 1)  # 16x16 cells
        self.head_large = nn.Conv2d(64, outputs, 1)  # 8x8 cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stage1(self.stem(x))
        coarse = self.stage2(fine)
        neck = self.neck(torch.cat([self.up(self.reduce(coarse)), fine], dim=1))
        small, large = self.head_small(neck), self.head_large(coarse)
        return torch.cat([small.flatten(2), large.flatten(2)], dim=2)


class TinyUNet(nn.Module):
    """A three-level U-Net-style segmenter for 64x64 inputs: bilinear upsampling and
    concatenated skips, one logit map per class."""

    input_shape = (3, 64, 64)

    def __init__(self, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width

        def double(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(ConvBNAct(cin, cout, 3), ConvBNAct(cout, cout, 3))

        self.enc1, self.enc2, self.bottom = double(3, w), double(w, 2 * w), double(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2, self.dec1 = double(4 * w + 2 * w, 2 * w), double(2 * w + w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        bottom = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(bottom), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        return self.head(d1)
