"""Image decoding and preprocessing by a recipe (Pillow does the decoding and resizing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetune.data.recipes import Preprocess
from edgetune.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


def _pil():  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image


def resize_shorter(image, size: int):  # type: ignore[no-untyped-def]
    width, height = image.size
    factor = size / min(width, height)
    return image.resize((max(1, round(width * factor)), max(1, round(height * factor))), _pil().BILINEAR)


def center_crop(image, size: int):  # type: ignore[no-untyped-def]
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_array(image, pre: Preprocess) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A decoded PIL image to a normalized float32 array in the recipe's layout."""
    mode = "L" if pre.channel_order == "L" else "RGB"
    pixels = np.asarray(image.convert(mode), dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    pixels = pixels * pre.scale
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    if pre.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    try:
        with _pil().open(path) as image:
            image.load()
            if pre.resize:
                image = resize_shorter(image, pre.resize)
            if pre.crop:
                if min(image.size) < pre.crop:
                    image = resize_shorter(image, pre.crop)
                image = center_crop(image, pre.crop)
            return to_array(image, pre)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken files and decoders
        raise InputError(f"cannot read image {path} ({str(exc)[:200]})", "remove or replace the file") from None
    except _pil().DecompressionBombError:
        raise InputError(
            f"image {path} is too large to decode safely (over {_pil().MAX_IMAGE_PIXELS * 2:,} pixels)", "downscale it or remove it"
        ) from None


def list_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Images in ``folder``; with class sub-folders, also a label per image and class names."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        paths: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(classes):
            for path in sorted((folder / name).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(path)
                    labels.append(index)
        return paths, labels, classes
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths, None, []


def random_resized_crops(
    photos: list[np.ndarray], count: int, seed: int, size: int, area: tuple[float, float], aspect: tuple[float, float], flip: bool
) -> list:  # type: ignore[type-arg]
    """Seeded random resized crops of uint8 HWC photos, as PIL images of ``size`` x ``size``."""
    Image = _pil()
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        for _ in range(10):
            target = rng.uniform(*area) * height * width
            ratio = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
            crop_w = int(round(np.sqrt(target * ratio)))
            crop_h = int(round(np.sqrt(target / ratio)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                break
        else:
            crop_h = crop_w = min(height, width)
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        image = image.resize((size, size), Image.BILINEAR)
        if flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(image)
    return crops
