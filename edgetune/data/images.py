"""Image decoding and preprocessing by a recipe (Pillow does the decoding and resizing)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class CropBox:
    photo: int  # index into the photos
    top: int
    left: int
    height: int
    width: int
    flip: bool


def crop_boxes(
    shapes: list[tuple[int, ...]], count: int, seed: int, area: tuple[float, float], aspect: tuple[float, float], flip: bool
) -> list[CropBox]:
    """Seeded random resized crop boxes (as torchvision's RandomResizedCrop draws them: an area
    share and a log-uniform aspect ratio, ten tries, else the centred square), photo by photo in
    turn, each flipped left to right with probability 1/2 when ``flip``."""
    rng = np.random.default_rng(seed)
    boxes = []
    for index in range(count):
        height, width = shapes[index % len(shapes)][:2]
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
        flipped = bool(flip and rng.random() < 0.5)
        boxes.append(CropBox(index % len(shapes), top, left, crop_h, crop_w, flipped))
    return boxes


def cut(photo: np.ndarray, box: CropBox, size: int):  # type: ignore[no-untyped-def]
    """One box of a uint8 HWC photo, resized to ``size`` x ``size`` (bilinear), as a PIL image."""
    Image = _pil()
    image = Image.fromarray(photo[box.top : box.top + box.height, box.left : box.left + box.width])
    image = image.resize((size, size), Image.BILINEAR)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if box.flip else image


def random_resized_crops(
    photos: list[np.ndarray], count: int, seed: int, size: int, area: tuple[float, float], aspect: tuple[float, float], flip: bool
) -> list:  # type: ignore[type-arg]
    """Seeded random resized crops of uint8 HWC photos, as PIL images of ``size`` x ``size``."""
    boxes = crop_boxes([p.shape for p in photos], count, seed, area, aspect, flip)
    return [cut(photos[box.photo], box, size) for box in boxes]


def random_resized_crop_arrays(photos: list[np.ndarray], boxes: list[CropBox], size: int, pre: Preprocess, workers: int = 2) -> np.ndarray:
    """The crops as one normalized float32 array, cut and converted on ``workers`` threads (PIL's
    resize and numpy's arithmetic let go of the GIL); the same values as one by one."""
    from concurrent.futures import ThreadPoolExecutor

    first = to_array(cut(photos[boxes[0].photo], boxes[0], size), pre)
    x = np.empty((len(boxes), *first.shape), np.float32)
    x[0] = first

    def convert(index: int) -> None:
        box = boxes[index]
        x[index] = to_array(cut(photos[box.photo], box, size), pre)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="crops") as pool:
        list(pool.map(convert, range(1, len(boxes))))
    return x
