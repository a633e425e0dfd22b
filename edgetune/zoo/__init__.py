"""Reference models defined in edgetune itself (no torchvision or timm, nothing downloaded).

Each entry is a callable usable as a MODEL argument, e.g. ``edgetune.zoo:digits_cnn``.
Only the digits CNN is trained (its weights ship with the package); the others are
untrained edge architectures for op coverage and speed, with BatchNorm statistics settled
on seeded random inputs so that activations have realistic ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgetune.zoo.digits import DigitsCNN
from edgetune.zoo.efficientnet_lite import EfficientNetLite
from edgetune.zoo.layers import prepare_batchnorm, settle_batchnorm
from edgetune.zoo.mlperf_tiny import DSCNN, ResNet8
from edgetune.zoo.mobilenet_v2 import MobileNetV2


def digits_cnn() -> nn.Module:
    """The digits CNN with its shipped trained weights."""
    from safetensors.torch import load_file

    from edgetune.zoo.train import WEIGHTS

    model = DigitsCNN()
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval()


def _untrained(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> nn.Module:
    """Build with seeded initial weights (without touching the global RNG) and settled
    BatchNorm, the settled state from the capture cache when it holds it (zoo/settled.py)."""
    from edgetune.zoo.settled import settle_cached

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build()
    settle_cached(model, input_shape, 0, lambda: settle_batchnorm(model, input_shape, seed=0), lambda: prepare_batchnorm(model))
    return model


def efficientnet_lite0(image_size: int = 224) -> nn.Module:
    return _untrained(lambda: EfficientNetLite(image_size=image_size), (3, image_size, image_size))


def mobilenet_v2(image_size: int = 224, width: float = 1.0) -> nn.Module:
    return _untrained(lambda: MobileNetV2(width=width), (3, image_size, image_size))


def resnet8() -> nn.Module:
    return _untrained(ResNet8, ResNet8.input_shape)


def ds_cnn() -> nn.Module:
    return _untrained(DSCNN, DSCNN.input_shape)


def tiny_detector() -> nn.Module:
    from edgetune.zoo.dense import TinyDetector

    return _untrained(TinyDetector, TinyDetector.input_shape)


def tiny_unet() -> nn.Module:
    from edgetune.zoo.dense import TinyUNet

    return _untrained(TinyUNet, TinyUNet.input_shape)


def mobilenet_v3_small() -> nn.Module:
    from edgetune.zoo.mobile import MobileNetV3Small

    return _untrained(MobileNetV3Small, MobileNetV3Small.input_shape)


def shufflenet_v2() -> nn.Module:
    from edgetune.zoo.mobile import ShuffleNetV2

    return _untrained(ShuffleNetV2, ShuffleNetV2.input_shape)


def gru_kws() -> nn.Module:
    from edgetune.zoo.sequence import GRUKeywordSpotter

    return _untrained(GRUKeywordSpotter, GRUKeywordSpotter.input_shape)


def audio_conv1d() -> nn.Module:
    from edgetune.zoo.sequence import AudioConv1d

    return _untrained(AudioConv1d, AudioConv1d.input_shape)


def tiny_vit() -> nn.Module:
    from edgetune.zoo.vit import TinyViT

    return _untrained(TinyViT, TinyViT.input_shape)


def intent_bert() -> nn.Module:
    """A two-layer BERT classifier for the intents commands (calibration/intents: 5 classes,
    a vocabulary under 128 words, 16 tokens), untrained: ``make demo`` trains it with
    ``--finetune``. It takes ids, an attention mask and token types (not in ZOO, whose
    entries take one float tensor)."""
    from edgetune.zoo.bert import BertEncoder

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return BertEncoder(vocab=128, length=16, dim=32, layers=2, classes=5, pooling="cls").eval()


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    trained: bool
    data: str | None  # a bundled data set the model takes, if any


ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in [
        ZooEntry("digits_cnn", digits_cnn, (1, 8, 8), True, "digits"),
        ZooEntry("efficientnet_lite0", efficientnet_lite0, (3, 224, 224), False, "sample-images"),
        ZooEntry("mobilenet_v2", mobilenet_v2, (3, 224, 224), False, "sample-images"),
        ZooEntry("resnet8", resnet8, (3, 32, 32), False, None),
        ZooEntry("ds_cnn", ds_cnn, (1, 49, 10), False, None),
        ZooEntry("tiny_detector", tiny_detector, (3, 64, 64), False, None),
        ZooEntry("tiny_unet", tiny_unet, (3, 64, 64), False, None),
        ZooEntry("mobilenet_v3_small", mobilenet_v3_small, (3, 224, 224), False, "sample-images"),
        ZooEntry("shufflenet_v2", shufflenet_v2, (3, 224, 224), False, "sample-images"),
        ZooEntry("gru_kws", gru_kws, (49, 10), False, None),
        ZooEntry("audio_conv1d", audio_conv1d, (40, 96), False, None),
        ZooEntry("tiny_vit", tiny_vit, (3, 32, 32), False, None),
    ]
}
