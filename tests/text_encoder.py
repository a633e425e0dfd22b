"""A BERT-shaped encoder written in plain torch, for tests/test_text_inputs.py (token ids in)."""

import math

import torch
from torch import nn

from edgetune.zoo.bert import BertEncoder, BertLayer

# A BERT layer written out (self-attention with residual and LayerNorm, a GELU feed-forward): the zoo's.
Layer = BertLayer


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


# BERT's forward with a mask and token types: the zoo's (edgetune.zoo.bert).
Bert = BertEncoder


class MaskOnly(nn.Module):
    """A forward that must be given the mask (no default)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Bert()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask)


def bert() -> nn.Module:
    torch.manual_seed(0)
    return Bert()


def bert_classifier() -> nn.Module:
    torch.manual_seed(0)
    return Bert(pooling="cls")


def mask_only() -> nn.Module:
    torch.manual_seed(0)
    return MaskOnly()


class FillLayer(nn.Module):
    """DistilBERT's eager attention mask: ``scores.masked_fill((mask == 0).view(...).expand_as(scores), finfo.min)``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inner = self.layer
        q, k, v = inner.split(inner.query(x)), inner.split(inner.key(x)), inner.split(inner.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(inner.head_dim)
        hidden = (mask == 0).view(x.shape[0], 1, 1, x.shape[1]).expand_as(scores)
        scores = scores.masked_fill(hidden, torch.tensor(torch.finfo(scores.dtype).min))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = inner.norm1(x + inner.output(context))
        return inner.norm2(x + inner.out(nn.functional.gelu(inner.intermediate(x))))


class MaskedFillBert(BertEncoder):
    """The same weights as Bert, with the mask written as recent ``transformers`` releases write
    it: ``style="4d"``, ``_prepare_4d_attention_mask`` (the mask expanded to [batch, 1, steps,
    steps], inverted, and ``masked_fill``-ed with finfo.min where it is set); ``style="distil"``,
    DistilBERT's per-layer ``masked_fill`` of the scores."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.norm(self.words(input_ids) + self.positions(self.position_ids) + self.types(token_type_ids))
        if self.style == "distil":
            for layer in self.layers:
                x = FillLayer(layer)(x, attention_mask)
        else:
            batch, steps = attention_mask.shape
            expanded = attention_mask[:, None, None, :].expand(batch, 1, steps, steps).to(x.dtype)
            inverted = 1.0 - expanded
            bias = inverted.masked_fill(inverted.to(torch.bool), torch.finfo(x.dtype).min)
            for layer in self.layers:
                x = layer(x, bias)
        weights = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def masked_fill_bert(style: str = "4d") -> nn.Module:
    torch.manual_seed(0)
    return MaskedFillBert(style).eval()
