"""A small BERT, written for edgetune after Devlin et al., "BERT" (2019): word, position and
token-type embeddings, post-norm encoder layers (self-attention with BERT's additive mask
``(1 - mask) * finfo.min``, a GELU feed-forward), and either a classifier on the [CLS]
position through a tanh pooler or a masked mean, L2-normalized (a sentence encoder, as
sentence-transformers pools). Its forward takes what a tokenizer gives: ``input_ids``, and
optionally ``attention_mask`` and ``token_type_ids``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BertLayer(nn.Module):
    """Self-attention with a residual and LayerNorm, then a GELU feed-forward with the same."""

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

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if bias is not None:
            scores = scores + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = self.norm1(x + self.output(context))
        return self.norm2(x + self.out(nn.functional.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """``pooling``: "cls" (a classifier of ``classes`` outputs) or "mean" (an embedding of ``dim``)."""

    def __init__(
        self, vocab: int = 64, length: int = 16, dim: int = 32, layers: int = 2, classes: int = 3, pooling: str = "mean", heads: int = 4
    ) -> None:
        super().__init__()
        self.words, self.positions, self.types = nn.Embedding(vocab, dim), nn.Embedding(length, dim), nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, 4 * dim) for _ in range(layers))
        self.pooler, self.classifier = nn.Linear(dim, dim), nn.Linear(dim, classes)
        self.pooling = pooling
        self.register_buffer("position_ids", torch.arange(length)[None], persistent=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.norm(self.words(input_ids) + self.positions(self.position_ids) + self.types(token_type_ids))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        if self.pooling == "cls":
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))
        weights = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)
