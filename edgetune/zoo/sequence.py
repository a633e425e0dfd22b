"""Sequence models for sensors and audio, written for edgetune: a GRU keyword spotter over
MFCC frames and a 1-D convolutional audio classifier (a small TCN-style net with residual
blocks and dilations). They bring Conv1d, BatchNorm1d, 1-D pooling and recurrent layers.
"""

from __future__ import annotations

import torch
from torch import nn


class GRUKeywordSpotter(nn.Module):
    """49 frames of 10 MFCCs (1 s of audio, as the Speech Commands front end gives), a 2-layer
    GRU, and a classifier on the last step's state: 12 classes (10 words, silence, unknown)."""

    input_shape = (49, 10)

    def __init__(self, features: int = 10, hidden: int = 64, classes: int = 12) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.gru(x)
        return self.classifier(state[-1])


class ResidualBlock1d(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class AudioConv1d(nn.Module):
    """40 log-mel bands over 96 frames: a strided stem, residual 1-D blocks with growing
    dilation, max pooling between, a global average and a 12-way classifier."""

    input_shape = (40, 96)

    def __init__(self, bands: int = 40, channels: int = 48, classes: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(bands, channels, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(channels), nn.ReLU())
        self.blocks = nn.Sequential(
            ResidualBlock1d(channels, 1), nn.MaxPool1d(2), ResidualBlock1d(channels, 2), ResidualBlock1d(channels, 4)
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))
