"""Turn a DATA argument into a :class:`Dataset`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.callables import load_callable, looks_like_callable
from edgetune.data import images
from edgetune.data.dataset import Dataset, Role
from edgetune.data.recipes import Recipe, bundled_recipes, load_recipe
from edgetune.errors import InputError


def load_dataset(spec: str, role: Role, recipe: str | None = None, limit: int | None = None) -> Dataset:
    """Load DATA given as a bundled set name (``digits``, ``digits:test``), an ``.npz``
    file, a folder of images or a ``module:callable`` yielding batches.

    ``role`` picks the split of a bundled set when ``spec`` names none.
    """
    data = _load(spec, role, recipe)
    return data.take(limit) if limit is not None else data


def _load(spec: str, role: Role, recipe: str | None) -> Dataset:
    name, _, split = spec.partition(":")
    if name in bundled_recipes() and not Path(spec).exists():
        return load_bundled(load_recipe(name), split or role)  # type: ignore[arg-type]
    path = Path(spec)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path, load_recipe(recipe or "imagenet"))
    if path.exists():
        raise InputError(f"data {spec} is neither an .npz file nor a folder of images", "give an .npz with x (and y), or a folder")
    if looks_like_callable(spec):
        return load_from_callable(spec)
    raise InputError(
        f"data {spec!r} does not exist",
        f"give an .npz file, an image folder, module:callable, or a bundled set ({', '.join(bundled_recipes())})",
    )


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise InputError(
                    f"{path} has no array named x (it has: {', '.join(archive.files) or 'nothing'})",
                    "save the samples as x=..., labels as y=...",
                )
            x = np.asarray(archive["x"])
            y = np.asarray(archive["y"]) if "y" in archive.files else None
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as .npz ({exc})", "save it with numpy.savez") from None
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"x in {path} is {x.dtype}, not numbers", "store float32 samples")
    return Dataset(x.astype(np.float32), _targets(y, f"y in {path}"), str(path))


def _targets(y: np.ndarray | None, what: str) -> np.ndarray | None:
    """Integer class labels (one per sample) as int64; float regression targets as float32."""
    if y is None:
        return None
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32)
    if y.ndim != 1:
        raise InputError(f"{what} has shape {y.shape}", "store one integer label per sample, or float regression targets")
    return y.astype(np.int64)


def load_image_folder(folder: Path, recipe: Recipe) -> Dataset:
    paths, labels, classes = images.list_images(folder)
    if not paths:
        raise InputError(f"folder {folder} holds no images", f"put {', '.join(sorted(images.IMAGE_SUFFIXES))} files in it")
    arrays = [images.load_image(path, recipe.preprocess) for path in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"images in {folder} have different sizes after preprocessing: {sorted(shapes)}", "set crop in the recipe")
    y = np.asarray(labels, dtype=np.int64) if labels is not None else None
    return Dataset(np.stack(arrays), y, str(folder), tuple(classes), recipe.preprocess.as_dict())


def load_from_callable(spec: str) -> Dataset:
    produce = load_callable(spec, "data callable")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    try:
        for batch in produce():
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            xs.append(_numpy(x))
            if y is not None:
                ys.append(_numpy(y))
    except TypeError as exc:
        raise InputError(f"{spec} did not yield batches ({exc})", "yield arrays x or tuples (x, y)") from None
    if not xs:
        raise InputError(f"{spec} yielded no batches", "yield at least one batch")
    y_all = _targets(np.concatenate(ys), f"labels from {spec}") if ys and len(ys) == len(xs) else None
    try:
        x_all = np.concatenate(xs).astype(np.float32)
    except ValueError as exc:
        raise InputError(f"batches from {spec} do not have one shape ({exc})", "yield batches of one sample shape") from None
    return Dataset(x_all, y_all, spec)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_bundled(recipe: Recipe, role: str) -> Dataset:
    if role not in ("calibration", "test", "train"):
        raise InputError(f"{recipe.name} has no split {role!r}", "use calibration, test or train")
    if recipe.source == "sklearn:digits":
        return _digits(recipe, role)
    if recipe.source == "sklearn:sample_images":
        return _sample_images(recipe, role)
    raise InputError(f"recipe {recipe.name} describes {recipe.source!r} data, not a bundled set", "pass a folder with --recipe")


def sklearn_data_file(relative: str) -> Path:
    """A data file that ships inside scikit-learn, found without importing it (importing
    sklearn.datasets costs about a second)."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / relative
        if path.exists():
            return path
    raise InputError(f"scikit-learn's bundled file {relative} is missing", "install scikit-learn (pip install scikit-learn)")


def _digits(recipe: Recipe, role: str) -> Dataset:
    # The same file and layout sklearn.datasets.load_digits reads: 64 pixels then the label per row.
    table = np.loadtxt(sklearn_data_file("datasets/data/digits.csv.gz"), delimiter=",", dtype=np.float32)
    x = table[:, :64].reshape(-1, 1, 8, 8)
    y = table[:, 64].astype(np.int64)
    pre = recipe.preprocess
    x = (x * pre.scale - np.float32(pre.mean[0])) / np.float32(pre.std[0])
    order = np.random.default_rng(int(recipe.split["seed"])).permutation(len(x))
    n_test, n_cal = int(recipe.split["test"]), int(recipe.split["calibration"])
    cuts = {"test": order[:n_test], "calibration": order[n_test : n_test + n_cal], "train": order[n_test + n_cal :]}
    index = cuts[role]
    return Dataset(x[index], y[index], f"{recipe.name}:{role}", recipe.labels, pre.as_dict())


def _sample_images(recipe: Recipe, role: str) -> Dataset:
    from PIL import Image

    if role == "train":
        role = "calibration"
    # The photos sklearn.datasets.load_sample_images returns, in its (sorted) order.
    folder = sklearn_data_file("datasets/images")
    photos = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as photo:
            photos.append(np.asarray(photo.convert("RGB")))
    crops = images.random_resized_crops(
        photos,
        count=int(recipe.split[role]),
        seed=int(recipe.split[f"{role}_seed"]),
        size=int(recipe.preprocess.crop or 224),
        area=tuple(recipe.crops.get("area", (0.15, 1.0))),  # type: ignore[arg-type]
        aspect=tuple(recipe.crops.get("aspect", (0.75, 4 / 3))),  # type: ignore[arg-type]
        flip=bool(recipe.crops.get("flip", True)),
    )
    x = np.empty((len(crops), *images.to_array(crops[0], recipe.preprocess).shape), np.float32)
    for index, crop in enumerate(crops):
        x[index] = images.to_array(crop, recipe.preprocess)
    return Dataset(x, None, f"{recipe.name}:{role}", (), recipe.preprocess.as_dict())
