"""Unseen architectures: small models written here, independently of ``edgetune.zoo``, of the
kinds users ship (issue 21).

The bar: at least 9 in 10 compress to both int8 formats with int8-versus-fp32 output cosine
>= 0.98 (the TFLite file against PyTorch) and TFLite-versus-ONNX int8 cosine >= 0.99. Each model
is built from its own seed, untrained; its BatchNorm layers get running statistics from 8
seeded forward passes in train mode before ``eval()``. It is compressed with
``edgetune.compress`` (the module itself, 64 seeded Gaussian calibration samples from an
``.npz``, defaults otherwise), and both artifacts run on 16 fresh seeded inputs. Separately, 50%
channel pruning (l2) of the captured graph: the MAC ratio, or the refusal and the ratio with
``skip_unsupported``; the pruned graph is calibrated and written to int8 TFLite, which must run.

An EdgetuneError is a refusal, recorded with its one-line message; any other exception is a
bug, recorded apart with its type, message and the innermost edgetune frame.

    python bench/unseen.py [--models a,b]

Prints a table and writes bench/results/unseen.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, table, write_json  # noqa: E402

import edgetune  # noqa: E402
from edgetune.capture import capture  # noqa: E402
from edgetune.errors import EdgetuneError  # noqa: E402
from edgetune.evaluate.runtime import OnnxRunner  # noqa: E402
from edgetune.evaluate.tflite_runtime import TfliteRunner  # noqa: E402
from edgetune.export.tflite import write_tflite  # noqa: E402
from edgetune.prune import PruneConfig, prune_channels  # noqa: E402
from edgetune.quantize import QuantConfig, calibrate  # noqa: E402

COSINE_INT8_FP32 = 0.98
COSINE_TFLITE_ONNX = 0.99
CALIBRATION_SAMPLES = 64
TEST_SAMPLES = 16
WARMUP_PASSES = 8


# ---- building blocks ------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class Ghost(nn.Module):
    """Half the outputs from a 1x1 conv, the other half from a cheap depthwise conv over those."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        half = cout // 2
        self.primary = conv_bn(cin, half, 1, act=nn.ReLU() if relu else None)
        self.cheap = conv_bn(half, half, 3, groups=half, act=nn.ReLU() if relu else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.primary(x)
        return torch.cat([main, self.cheap(main)], dim=1)


class GhostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.ReLU())
        self.expand, self.shrink = Ghost(16, 48), Ghost(48, 16, relu=False)
        self.down = nn.Sequential(Ghost(16, 32), conv_bn(32, 32, 3, 2, groups=32), Ghost(32, 32, relu=False))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.shrink(self.expand(x))
        x = self.down(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(weight))))


class V3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.expand = conv_bn(cin, hidden, 1, act=nn.Hardswish())
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.Hardswish())
        self.se = SqueezeExcite(hidden, hidden // 4)
        self.project = conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish())
        self.blocks = nn.Sequential(V3Block(16, 48, 16, 3, 1), V3Block(16, 64, 24, 5, 2), V3Block(24, 72, 24, 5, 1))
        self.head = nn.Sequential(nn.Linear(24, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class YoloNeck(nn.Module):
    """Three strides of conv-BN-SiLU, a top-down path (nearest upsample, concat) and one 1x1
    head per scale, flattened and concatenated over the anchors' positions as exporters do."""

    def __init__(self, outputs: int = 3 * (5 + 2)) -> None:
        super().__init__()
        self.c2, self.c3, self.c4 = (
            conv_bn(3, 16, 3, 2, act=nn.SiLU()),
            conv_bn(16, 32, 3, 2, act=nn.SiLU()),
            conv_bn(32, 64, 3, 2, act=nn.SiLU()),
        )
        self.lateral = conv_bn(64, 32, 1, act=nn.SiLU())
        self.merge3 = conv_bn(64, 32, 3, act=nn.SiLU())
        self.reduce3 = conv_bn(32, 16, 1, act=nn.SiLU())
        self.merge2 = conv_bn(32, 16, 3, act=nn.SiLU())
        self.head2, self.head3 = nn.Conv2d(16, outputs, 1), nn.Conv2d(32, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p3 = self.merge3(torch.cat([F.interpolate(self.lateral(c4), scale_factor=2, mode="nearest"), c3], 1))
        p2 = self.merge2(torch.cat([F.interpolate(self.reduce3(p3), scale_factor=2, mode="nearest"), c2], 1))
        return torch.cat([self.head2(p2).flatten(2), self.head3(p3).flatten(2)], 2)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout, act=nn.ReLU()), conv_bn(cout, cout, act=nn.ReLU()))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.bottom = double_conv(3, 16), double_conv(16, 32), double_conv(32, 64)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = double_conv(64, 32)
        self.reduce1 = nn.Conv2d(32, 16, 1)
        self.dec1 = double_conv(32, 16)
        self.classes = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        bottom = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(bottom), e2], 1))
        up1 = self.reduce1(F.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=True))
        return self.classes(self.dec1(torch.cat([up1, e1], 1)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_in = cin if stride == 2 else cin // 2
        half = cout // 2
        self.branch = nn.Sequential(
            conv_bn(branch_in, half, 1, act=nn.ReLU()), conv_bn(half, half, 3, stride, groups=half), conv_bn(half, half, 1, act=nn.ReLU())
        )
        if stride == 2:
            self.shortcut = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin), conv_bn(cin, half, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, through = x.chunk(2, dim=1)
            out = torch.cat([kept, self.branch(through)], 1)
        else:
            out = torch.cat([self.shortcut(x), self.branch(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 24, 3, 2, act=nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1))
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1, act=nn.ReLU()), conv_bn(width, width, 3, stride, groups=groups, act=nn.ReLU()), conv_bn(width, cout, 1)
        )
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, 3, act=nn.ReLU())
        self.blocks = nn.Sequential(ResNeXtBlock(32, 32, 64, 1), ResNeXtBlock(64, 64, 64, 2), ResNeXtBlock(64, 64, 128, 2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class CausalConv(nn.Module):
    """A dilated Conv1d padded on both sides, its look-ahead chomped off the end."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.chomp = 2 * dilation
        self.conv = nn.Conv1d(cin, cout, 3, padding=self.chomp, dilation=dilation)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)[:, :, : -self.chomp]))


class TCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1, self.layer2 = CausalConv(6, 24, 1), CausalConv(24, 24, 2)
        self.pool = nn.MaxPool1d(2)
        self.layer3 = CausalConv(24, 32, 4)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(x)
        x = self.pool(x + self.layer2(x))
        x = self.pool(self.layer3(x))
        return self.fc(x.mean(-1))


class RawAudioCNN(nn.Module):
    """M5-style: a wide strided Conv1d on the waveform, BatchNorm1d, max pools, global average."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 80, stride=16),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Conv1d(16, 32, 3),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.AdaptiveAvgPool1d(1),
        )
        self.fc = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).squeeze(-1))


class LSTMSensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, num_layers=2, batch_first=True)
        self.fc = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class BiGRUSpotter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(10, 24)
        self.gru = nn.GRU(24, 24, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(F.relu(self.frontend(x)))
        return self.fc(out.mean(1))


class TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, dim = x.shape
        qkv = self.qkv(x).reshape(batch, steps, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, steps, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 48, patch: int = 8) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(EncoderBlock(dim, 3), EncoderBlock(dim, 3))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class SequenceTransformer(nn.Module):
    def __init__(self, steps: int = 20, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, steps, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x) + self.position).mean(1))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, tokens * 2), nn.GELU(), nn.Linear(tokens * 2, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    def __init__(self, dim: int = 32, patch: int = 8) -> None:
        super().__init__()
        tokens = (32 // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(MixerBlock(tokens, dim), MixerBlock(tokens, dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


class Activations(nn.Module):
    """PReLU per channel and shared, LeakyReLU and ELU between convs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, act=nn.PReLU(16)),
            conv_bn(16, 32, 3, 2, act=nn.LeakyReLU(0.1)),
            conv_bn(32, 32, act=nn.ELU()),
            conv_bn(32, 48, 3, 2, act=nn.PReLU()),
        )
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class ContextSegmenter(nn.Module):
    """Stride-4 features, a global context vector broadcast-added back, bilinear upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 32, 3, 2, act=nn.ReLU()), conv_bn(32, 64, 3, 2, act=nn.ReLU()))
        self.context = nn.Conv2d(64, 64, 1)
        self.fuse = conv_bn(64, 32, act=nn.ReLU())
        self.classes = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        context = F.relu(self.context(features.mean((2, 3), keepdim=True)))
        logits = self.classes(self.fuse(features + context))
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)


class SeparableKWS(nn.Module):
    """A keyword spotter on 49 MFCC frames of 10 coefficients: depthwise-separable convs."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, (10, 4), (2, 2), (5, 1), bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(conv_bn(width, width, 3, groups=width, act=nn.ReLU()), conv_bn(width, width, 1, act=nn.ReLU()))
                for _ in range(3)
            ]
        )
        self.fc = nn.Linear(width, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


IMAGE = (3, 32, 32)
CASES = (
    Case("ghost_cnn", GhostNet, IMAGE),
    Case("mobilenetv3_se", MobileV3, IMAGE),
    Case("yolo_fpn_neck", YoloNeck, IMAGE),
    Case("unet_transpose", UNet, IMAGE),
    Case("shufflenet_unit", ShuffleNet, IMAGE),
    Case("resnext_g4", ResNeXt, IMAGE),
    Case("tcn_1d", TCN, (6, 128)),
    Case("raw_audio_cnn", RawAudioCNN, (1, 4000)),
    Case("lstm_sensor", LSTMSensor, (20, 8)),
    Case("bigru_kws", BiGRUSpotter, (25, 10)),
    Case("vit_timm_attention", TinyViT, IMAGE),
    Case("transformer_encoder", SequenceTransformer, (20, 8)),
    Case("mlp_mixer", Mixer, IMAGE),
    Case("prelu_leaky_elu", Activations, IMAGE),
    Case("seg_global_context", ContextSegmenter, IMAGE),
    Case("ds_cnn_kws", SeparableKWS, (1, 49, 10)),
)


# ---- measurement ----------------------------------------------------------------------------


def build(case: Case, seed: int) -> nn.Module:
    """The model from its seed, in eval mode; BatchNorm layers first see 8 seeded batches."""
    torch.manual_seed(seed)
    model = case.build()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for _ in range(WARMUP_PASSES):
                model(torch.randn(16, *case.input_shape))
    return model.eval()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def failure(exc: Exception) -> dict[str, str]:
    """A refusal (EdgetuneError) or a bug: its type, message and innermost edgetune frame."""
    if isinstance(exc, EdgetuneError):
        return {"error": exc.one_line()}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/edgetune/" in f.filename]
    where = f"{frames[-1].filename.split('/edgetune/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name}" if frames else "outside edgetune"
    return {"bug": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", "where": f"edgetune/{where}"}


def compressed(case: Case, model: nn.Module, folder: Path, calib: np.ndarray, x: np.ndarray) -> dict[str, Any]:
    """Both int8 artifacts from ``edgetune.compress``, run against PyTorch."""
    calib_path = folder / f"{case.name}.npz"
    np.savez(calib_path, x=calib)
    out = folder / case.name
    try:
        edgetune.compress(model, str(calib_path), out, input_shape=case.input_shape)
        tflite_out = TfliteRunner((out / "model.tflite").read_bytes()).run(x)
        onnx_out = OnnxRunner(out / "model.onnx", spin=False).run(x)
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        return {"compressed": False, **failure(exc)}
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    cos_int8, cos_runtimes = cosine(tflite_out, reference), cosine(tflite_out, onnx_out)
    return {
        "compressed": True,
        "cosine_int8_fp32": cos_int8,
        "cosine_tflite_onnx": cos_runtimes,
        "passed": cos_int8 >= COSINE_INT8_FP32 and cos_runtimes >= COSINE_TFLITE_ONNX,
    }


def pruned(case: Case, model: nn.Module, calib: np.ndarray, x: np.ndarray) -> dict[str, Any]:
    """50% channel pruning of the captured graph: the MAC ratio (with ``skip_unsupported`` after
    a refusal, whose text is kept), and whether the pruned int8 TFLite file runs."""
    result: dict[str, Any] = {}
    try:
        graph = capture(model, case.input_shape)
        try:
            report = prune_channels(graph, PruneConfig(0.5))
        except EdgetuneError as exc:
            result["refused"] = exc.one_line()
            graph = capture(model, case.input_shape)
            report = prune_channels(graph, PruneConfig(0.5, skip_unsupported=True))
        result["macs_ratio"] = report.macs_after / max(report.macs_before, 1)
        calibrate(graph, calib, QuantConfig(samples=len(calib)))
        outputs = TfliteRunner(write_tflite(graph)).run(x)
        result["runs"] = bool(np.isfinite(outputs).all())
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        result |= failure(exc)
    return result


def measure(case: Case, seed: int, folder: Path) -> dict[str, Any]:
    model = build(case, seed)
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((CALIBRATION_SAMPLES, *case.input_shape)).astype(np.float32)
    x = rng.standard_normal((TEST_SAMPLES, *case.input_shape)).astype(np.float32)
    row: dict[str, Any] = {"model": case.name, "input_shape": list(case.input_shape), "seed": seed}
    row |= compressed(case, model, folder, calib, x)
    row["prune_50"] = pruned(case, model, calib, x)
    return row


# ---- report ---------------------------------------------------------------------------------


def _compressed_cell(row: dict[str, Any]) -> str:
    if row["compressed"]:
        return "yes"
    return ("BUG " + row["bug"] if "bug" in row else "no: " + row["error"].removeprefix("error: "))[:60]


def _prune_cell(prune: dict[str, Any]) -> str:
    if "macs_ratio" not in prune:
        return ("BUG " + prune["bug"] if "bug" in prune else "no: " + prune["error"].removeprefix("error: "))[:50]
    text = f"{prune['macs_ratio']:.2f}" + (" (skip)" if "refused" in prune else "")
    if "bug" in prune or "error" in prune:
        return text + " export fails"
    return text if prune.get("runs") else text + " NaN"


def _cos(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(c.name for c in CASES))
    args = parser.parse_args()
    chosen = args.models.split(",")
    unknown = set(chosen) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed, case in enumerate(CASES):
            if case.name in chosen:
                log(f"unseen: {case.name}")
                rows.append(measure(case, seed, Path(folder)))
    header = ["model", "compressed", "cos int8/fp32", "cos tflite/onnx", "pass", "prune 50%: MACs"]
    body = [
        [r["model"], _compressed_cell(r), _cos(r, "cosine_int8_fp32"), _cos(r, "cosine_tflite_onnx")]
        + ["yes" if r.get("passed") else "no", _prune_cell(r["prune_50"])]
        for r in rows
    ]
    print(table(body, header))
    passed = sum(bool(r.get("passed")) for r in rows)
    bugs = [r["model"] for r in rows if "bug" in r or "bug" in r["prune_50"]]
    print(f"{passed} of {len(rows)} pass (bar: 9 in 10){'; unexpected exceptions in ' + ', '.join(bugs) if bugs else ''}")
    document = {
        "bar": {"cosine_int8_fp32": COSINE_INT8_FP32, "cosine_tflite_onnx": COSINE_TFLITE_ONNX, "share": 0.9},
        "passed": passed,
        "models": rows,
    }
    log(f"wrote {write_json('unseen', document)}")


if __name__ == "__main__":
    main()
