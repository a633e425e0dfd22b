"""Turn a DATA argument into a :class:`Dataset`."""

from __future__ import annotations

import importlib.util
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.callables import load_callable, looks_like_callable, user_code
from edgetune.data import images
from edgetune.data.dataset import Dataset, Role
from edgetune.data.recipes import Recipe, bundled_recipes, load_recipe
from edgetune.data.text import TEXT_SUFFIXES, TextSpec, load_text
from edgetune.errors import InputError
from edgetune.progress import Progress, silent
from edgetune.targets import usable_cores


@dataclass(frozen=True)
class CallableLimits:
    """How much of a ``module:callable`` data source is read: it stops at ``max_samples``
    (a generator may yield forever), and fails after ``max_seconds`` (it may also block)."""

    max_samples: int = 20_000
    max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_samples < 1 or not math.isfinite(self.max_seconds) or self.max_seconds <= 0:
            raise InputError(f"data limits {self} are not positive", "give max_samples >= 1 and max_seconds > 0")


def load_dataset(
    spec: str,
    role: Role,
    recipe: str | None = None,
    limit: int | None = None,
    *,
    limits: CallableLimits = CallableLimits(),
    progress: Progress = silent,
    text: TextSpec | None = None,
) -> Dataset:
    """Load DATA given as a bundled set name (``digits``, ``digits:test``), an ``.npz``
    file, a folder of images, a ``.txt`` or ``.jsonl`` text file (tokenized as ``text``
    says) or a ``module:callable`` yielding batches (read within ``limits``).

    ``role`` picks the split of a bundled set when ``spec`` names none.
    """
    data = _load(spec, role, recipe, limits, progress, text or TextSpec())
    return data.take(limit) if limit is not None else data


def runs_user_code(spec: str) -> bool:
    """Whether loading ``spec`` calls a ``module:callable``: such a load belongs in the main
    thread, the only one its time limit (a SIGALRM timer) can interrupt."""
    name = spec.partition(":")[0]
    if name in bundled_recipes() and not Path(spec).exists():
        return False
    return not Path(spec).exists() and looks_like_callable(spec)


def _load(spec: str, role: Role, recipe: str | None, limits: CallableLimits, progress: Progress, text: TextSpec) -> Dataset:
    name, _, split = spec.partition(":")
    if name in bundled_recipes() and not Path(spec).exists():
        return load_bundled(load_recipe(name), split or role)  # type: ignore[arg-type]
    path = Path(spec)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix in TEXT_SUFFIXES and path.is_file():
        return load_text(path, text)
    if path.is_dir():
        return load_image_folder(path, load_recipe(recipe or "imagenet"))
    if path.exists():
        raise InputError(
            f"data {spec} is neither an .npz file, a folder of images nor a .txt or .jsonl text file",
            "give an .npz with x (and y), a folder, or text",
        )
    if looks_like_callable(spec):
        return load_from_callable(spec, limits, progress)
    raise InputError(
        f"data {spec!r} does not exist",
        f"give an .npz file, an image folder, a .txt or .jsonl file, module:callable, or a bundled set ({', '.join(bundled_recipes())})",
    )


def load_npz(path: Path) -> Dataset:
    """Samples ``x`` (and ``y``), or one array per model input named like the forward's
    arguments (``input_ids``, ``attention_mask``, ...; and ``y``), stacked (see Dataset)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [name for name in archive.files if name != "y"]
            if not names:
                raise InputError(
                    f"{path} holds no samples (it has: {', '.join(archive.files) or 'nothing'})",
                    "save the samples as x=..., labels as y=...",
                )
            arrays = {name: np.asarray(archive[name]) for name in (["x"] if "x" in names else names)}
            y = np.asarray(archive["y"]) if "y" in archive.files else None
    except InputError:
        raise
    except Exception as exc:  # numpy and zipfile raise many kinds (EOFError on an empty file, BadZipFile, ...)
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {path} as .npz ({text})", "save it with numpy.savez") from None
    y = _targets(y, f"y in {path}")
    if "x" in arrays:
        return Dataset(_samples(arrays["x"], f"x in {path}"), y, str(path))
    samples = {name: _samples(array, f"{name} in {path}") for name, array in arrays.items()}
    if len(samples) == 1:
        ((name, x),) = samples.items()
        return Dataset(x, y, str(path), inputs=(name,))
    first, *others = samples.items()
    for name, array in others:
        if array.shape != first[1].shape or array.dtype != first[1].dtype:
            raise InputError(
                f"{path}: {name} is {array.dtype} {list(array.shape)} but {first[0]} is {first[1].dtype} {list(first[1].shape)}",
                "give every input of a model with several inputs one shape and type (token ids, attention mask, token types)",
            )
    return Dataset(np.stack(list(samples.values()), axis=1), y, str(path), inputs=tuple(samples))


def _samples(x: np.ndarray, what: str) -> np.ndarray:
    """Real-valued samples as float32, or token ids (int32 or int64) as int64: complex, boolean
    and object arrays are refused, and so are values that float32 cannot hold (they would
    become infinite). Images stored as uint8 are values."""
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"{what} holds {x.dtype} values, not real numbers", "store float32 samples")
    if x.dtype in (np.int32, np.int64):
        if x.size and x.min() < 0:
            raise InputError(f"{what} holds negative token ids (down to {int(x.min())})", "store ids from 0, or float samples")
        return x.astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float32)


def _targets(y: np.ndarray | None, what: str) -> np.ndarray | None:
    """Integer class labels (one per sample) as int64; float regression targets as float32."""
    if y is None:
        return None
    if np.issubdtype(y.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):
            return y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what} holds {y.dtype} values", "store integer class labels or float regression targets")
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


def load_from_callable(spec: str, limits: CallableLimits = CallableLimits(), progress: Progress = silent) -> Dataset:
    """The batches a callable yields, read until it stops or ``limits.max_samples`` are in; a
    source that takes longer than ``limits.max_seconds`` (even blocked in one batch) fails."""
    produce = load_callable(spec, "data callable")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    count = 0
    label = f"reading {spec}"
    progress(0, limits.max_samples, label)
    hint = "make it yield arrays x or tuples (x, y), or run with --debug"
    with _deadline(limits.max_seconds, spec), user_code(f"data callable {spec}", hint):
        for batch in produce():
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            x = _numpy(x)
            if x.ndim == 0:
                raise InputError(f"{spec} yielded a scalar, not a batch", "yield arrays of shape (batch, ...) or tuples (x, y)")
            xs.append(x)
            if y is not None:
                ys.append(_numpy(y))
            count += len(x)
            progress(min(count, limits.max_samples), limits.max_samples, label)
            if count >= limits.max_samples:
                break
    progress(limits.max_samples, limits.max_samples, label)
    if not xs:
        raise InputError(f"{spec} yielded no batches", "yield at least one batch")
    try:
        x_all = _samples(np.concatenate(xs), f"batches from {spec}")[: limits.max_samples]
        y_all = _targets(np.concatenate(ys), f"labels from {spec}")[: limits.max_samples] if ys and len(ys) == len(xs) else None  # type: ignore[index]
    except ValueError as exc:
        raise InputError(f"batches from {spec} do not have one shape ({exc})", "yield batches of one sample shape") from None
    source = spec if count < limits.max_samples else f"{spec} (its first {limits.max_samples} samples)"
    return Dataset(x_all, y_all, source)


class _TimedOut(BaseException):
    """Raised by the timer: a BaseException, so that neither the user's code nor ``user_code``
    mistakes it for an error of theirs."""


@contextmanager
def _deadline(seconds: float, spec: str) -> Iterator[None]:
    """Raise an InputError in the main thread when the block runs longer than ``seconds``,
    even when it is blocked inside a user's call (a SIGALRM timer interrupts it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    started = time.monotonic()

    def expire(signum: int, frame: Any) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TimedOut:
        raise InputError(
            f"data callable {spec} did not finish within {seconds:g} s ({time.monotonic() - started:.0f} s)",
            "yield fewer or faster batches, or save the data to an .npz",
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
    boxes = images.crop_boxes(
        [photo.shape for photo in photos],
        count=int(recipe.split[role]),
        seed=int(recipe.split[f"{role}_seed"]),
        area=tuple(recipe.crops.get("area", (0.15, 1.0))),  # type: ignore[arg-type]
        aspect=tuple(recipe.crops.get("aspect", (0.75, 4 / 3))),  # type: ignore[arg-type]
        flip=bool(recipe.crops.get("flip", True)),
    )
    x = images.random_resized_crop_arrays(photos, boxes, int(recipe.preprocess.crop or 224), recipe.preprocess, usable_cores())
    return Dataset(x, None, f"{recipe.name}:{role}", (), recipe.preprocess.as_dict())
