"""Data augmentation: a registry of named batch transforms, and user callables.

``--augment shift:2,flip,noise:0.05`` builds a chain. A transform takes a float batch (N x C x
H x W for images, N x C x T for 1-D signals), a seeded ``torch.Generator`` and its argument,
and returns a batch of the same shape; randomness comes only from the generator, so a seeded
run repeats exactly. Mixup also mixes the targets and is applied by the training loop
(``mixup:ALPHA``). A user transform is ``module:callable`` or ``file.py:callable`` taking
``(batch, generator)``. Text data takes word-level edits instead (``delete:0.1,swap:0.1``,
``synonyms:FILE``, ``paraphrase:module:callable``; ``text_augment.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgetune.errors import InputError
from edgetune.finetune.text_augment import TextChain, add_item, is_text_item
from edgetune.numbers import parse_finite
from edgetune.registry import Registry

Transform = Callable[[torch.Tensor, torch.Generator, float], torch.Tensor]
TRANSFORMS: Registry[Transform] = Registry("augmentation")
augmentation = TRANSFORMS.register
DEFAULTS = {"shift": 2.0, "crop": 2.0, "flip": 0.5, "noise": 0.05, "cutout": 0.25, "time_shift": 0.1, "mixup": 0.2}


def _uniform_ints(n: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high + 1, (n,), generator=generator)


def _shift(batch: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each sample moved by (dy, dx) along its last two axes, zero-filled (no wrap-around)."""
    out = torch.zeros_like(batch)
    height, width = batch.shape[-2], batch.shape[-1]
    for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist())):
        src_y, dst_y = slice(max(0, -y), height - max(0, y)), slice(max(0, y), height - max(0, -y))
        src_x, dst_x = slice(max(0, -x), width - max(0, x)), slice(max(0, x), width - max(0, -x))
        out[i, ..., dst_y, dst_x] = batch[i, ..., src_y, src_x]
    return out


@augmentation("shift")
def random_shift(batch: torch.Tensor, generator: torch.Generator, pixels: float) -> torch.Tensor:
    """Move each image up to ``pixels`` in each direction."""
    k = int(pixels)
    return _shift(batch, _uniform_ints(len(batch), -k, k, generator), _uniform_ints(len(batch), -k, k, generator))


@augmentation("crop")
def random_crop(batch: torch.Tensor, generator: torch.Generator, pixels: float) -> torch.Tensor:
    """Pad by ``pixels`` and crop back to size at a random place: the classic padded random crop."""
    return random_shift(batch, generator, pixels)


@augmentation("flip")
def horizontal_flip(batch: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """Mirror left-right with ``probability`` (only where a mirrored sample is still valid)."""
    chosen = torch.rand(len(batch), generator=generator) < probability
    out = batch.clone()
    out[chosen] = batch[chosen].flip(-1)
    return out


@augmentation("noise")
def gaussian_noise(batch: torch.Tensor, generator: torch.Generator, sigma: float) -> torch.Tensor:
    """Add noise of standard deviation ``sigma`` times the batch's own standard deviation."""
    return batch + torch.randn(batch.shape, generator=generator) * sigma * batch.std()


@augmentation("cutout")
def cutout(batch: torch.Tensor, generator: torch.Generator, share: float) -> torch.Tensor:
    """Zero one square per image whose side is ``share`` of the image's shorter side (DeVries and Taylor, 2017)."""
    height, width = batch.shape[-2], batch.shape[-1]
    side = max(1, int(round(share * min(height, width))))
    ys = _uniform_ints(len(batch), 0, height - side, generator).tolist()
    xs = _uniform_ints(len(batch), 0, width - side, generator).tolist()
    out = batch.clone()
    for i, (y, x) in enumerate(zip(ys, xs)):
        out[i, ..., y : y + side, x : x + side] = 0.0
    return out


@augmentation("time_shift")
def time_shift(batch: torch.Tensor, generator: torch.Generator, share: float) -> torch.Tensor:
    """Move a 1-D signal (or a spectrogram's time axis, the last one) by up to ``share`` of its length."""
    length = batch.shape[-1]
    k = max(1, int(round(share * length)))
    zeros = torch.zeros(len(batch), dtype=torch.int64)
    shifts = _uniform_ints(len(batch), -k, k, generator)
    if batch.ndim == 3:  # N x C x T: shift T alone
        return _shift(batch.unsqueeze(-2), zeros, shifts).squeeze(-2)
    return _shift(batch, zeros, shifts)


@dataclass(frozen=True)
class Augmentation:
    """A parsed chain: the transforms in order, and the mixup strength (0: none)."""

    steps: tuple[tuple[str, Transform, float], ...] = ()
    mixup: float = 0.0
    text: TextChain = TextChain()  # word-level edits of text passages (applied by the training loop)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for _, transform, argument in self.steps:
            batch = transform(batch, generator, argument)
        return batch

    def describe(self) -> list[str]:
        names = [f"{name}:{argument:g}" for name, _, argument in self.steps]
        return names + ([f"mixup:{self.mixup:g}"] if self.mixup else []) + self.text.describe()

    @property
    def on_tensors(self) -> bool:
        """Some part transforms sample tensors (images, signals), not text."""
        return bool(self.steps or self.mixup)


def parse_augment(text: str | None) -> Augmentation:
    """``shift:2,flip,noise:0.05,mixup:0.2`` or ``mypkg.aug:jitter`` (comma separated)."""
    if not text:
        return Augmentation()
    steps: list[tuple[str, Transform, float]] = []
    mixup = 0.0
    chain, share_given = TextChain(), False
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, raw = item.partition(":")
        if is_text_item(name):
            chain, share_given = add_item(chain, name, raw), share_given or name == "share"
        elif name in TRANSFORMS or name == "mixup":
            argument = parse_finite(raw, f"augmentation {name}", "shift:2 or noise:0.05") if raw else DEFAULTS[name]
            if name == "mixup":
                mixup = argument
            else:
                steps.append((name, TRANSFORMS[name], argument))
        elif raw:
            from edgetune.callables import load_callable

            user = load_callable(item, "augmentation")
            steps.append((item, _user_transform(user), 0.0))
        else:
            known = ", ".join(sorted([*DEFAULTS]))
            raise InputError(
                f"augmentation {name!r} is unknown",
                f"use {known}, a text edit (mask, delete, swap, insert, synonyms:FILE, paraphrase:CALLABLE), or module:callable",
            )
    if share_given and not chain:
        raise InputError(
            "augmentation share: sets how many passages text edits change, and no edit is given", "add one, e.g. delete:0.1,share:0.5"
        )
    return Augmentation(tuple(steps), mixup, chain)


def _user_transform(user: Callable[..., torch.Tensor]) -> Transform:
    def transform(batch: torch.Tensor, generator: torch.Generator, _argument: float) -> torch.Tensor:
        out = user(batch, generator)
        if not isinstance(out, torch.Tensor) or out.shape != batch.shape:
            raise InputError(
                f"augmentation {getattr(user, '__name__', user)} did not return a tensor shaped like its batch",
                "return the batch transformed",
            )
        return out

    return transform


def mixup_pairs(n: int, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A partner for each sample and its mixing weight lambda ~ Beta(alpha, alpha) (Zhang et al., 2018)."""
    partner = torch.randperm(n, generator=generator)
    gamma_a = torch._standard_gamma(torch.full((n,), alpha), generator=generator)
    gamma_b = torch._standard_gamma(torch.full((n,), alpha), generator=generator)
    return partner, gamma_a / (gamma_a + gamma_b)
