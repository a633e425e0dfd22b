"""A BERT-shaped encoder written in plain torch, for tests/test_text_inputs.py (token ids in)."""

import math

import torch
from torch import nn


class Layer(nn.Module):
    """A BERT layer written out: self-attention with residual and LayerNorm, a GELU feed-forward."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.intermediate = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = self.norm1(x + self.output(context))
        return self.norm2(x + self.out(nn.functional.gelu(self.intermediate(x))))


class Encoder(nn.Module):
    def __init__(self, vocab: int = 100, length: int = 16, dim: int = 32, layers: int = 2, classes: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(Layer(dim, heads, 4 * dim) for _ in range(layers))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)
        self.register_buffer("position_ids", torch.arange(length)[None], persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.words(ids) + self.positions(self.position_ids))
        for layer in self.layers:
            x = layer(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


class SentenceEncoder(Encoder):
    """Mean pooling and L2 normalization: a sentence embedding."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.words(ids) + self.positions(self.position_ids))
        for layer in self.layers:
            x = layer(x)
        return nn.functional.normalize(x.mean(1), dim=-1)


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return Encoder()


def sentence() -> nn.Module:
    torch.manual_seed(0)
    return SentenceEncoder()
