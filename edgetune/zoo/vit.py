"""A small vision transformer, written for edgetune after Dosovitskiy et al., "An Image is Worth
16x16 Words" (2021): patches embedded by a strided convolution, a learned class token and
position embedding, pre-norm encoder blocks with ``nn.MultiheadAttention`` and a GELU MLP, and
a classifier on the class token. It brings LayerNorm, attention and linear layers over steps.
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """32x32 images in 4x4 patches (64 tokens and a class token), width 64, 4 heads, 3 blocks."""

    input_shape = (3, 32, 32)

    def __init__(self, classes: int = 10, dim: int = 64, depth: int = 3, heads: int = 4, patch: int = 4) -> None:
        super().__init__()
        tokens = (self.input_shape[1] // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
