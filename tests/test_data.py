from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.data import load_dataset
from edgetune.errors import InputError


def test_digits_splits_are_fixed_and_disjoint() -> None:
    splits = {role: load_dataset("digits", role) for role in ("train", "calibration", "test")}
    assert [len(splits[r]) for r in ("train", "calibration", "test")] == [1077, 360, 360]
    keys = {role: {d.tobytes() for d in data.x} for role, data in splits.items()}
    # Digits has a few exact duplicate images; the splits must not share sample positions.
    assert len(keys["test"] & keys["calibration"]) < 5
    assert np.array_equal(load_dataset("digits:test", "train").x, splits["test"].x)
    assert splits["test"].sample_shape == (1, 8, 8) and splits["test"].x.max() <= 1.0


def test_npz_with_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(5, 3, 4, 4)), y=np.arange(5))
    data = load_dataset(str(path), "calibration")
    assert data.x.dtype == np.float32 and data.y is not None and data.y.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(2, np.int64)}, "holds no samples"),
        ({"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.zeros((2, 4), np.int64)}, "but input_ids is int64"),
        ({"x": np.zeros((0, 3, 4, 4))}, "is empty"),
        ({"x": np.full((2, 3), np.nan)}, "NaN"),
        ({"x": np.zeros((2, 3)), "y": np.zeros(3, np.int64)}, "2 samples but 3 labels"),
    ],
    ids=["no-samples", "input-shapes", "empty", "nan", "label-count"],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        load_dataset(str(path), "calibration")


def test_image_folder_with_classes(tmp_path: Path) -> None:
    from PIL import Image

    for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (300, 260), colour).save(tmp_path / label / f"{i}.png")
    data = load_dataset(str(tmp_path), "calibration", recipe="imagenet")
    assert data.x.shape == (4, 3, 224, 224) and data.labels == ("cat", "dog")
    assert data.y is not None and data.y.tolist() == [0, 0, 1, 1]
    # red image: channel 0 is far above the ImageNet mean after normalization
    assert data.x[0, 0].mean() > 1.0 > data.x[0, 1].mean()


def test_callable_yielding_batches(tmp_path: Path) -> None:
    source = tmp_path / "batches.py"
    source.write_text(
        "import numpy as np\ndef batches():\n    for i in range(3):\n        yield np.full((2, 4), i, np.float32), np.array([i, i])\n"
    )
    data = load_dataset(f"{source}:batches", "calibration")
    assert data.x.shape == (6, 4) and data.y is not None and data.y.tolist() == [0, 0, 1, 1, 2, 2]


def test_sample_images_are_seeded_crops() -> None:
    first = load_dataset("sample-images", "calibration", limit=4)
    again = load_dataset("sample-images", "calibration", limit=4)
    test = load_dataset("sample-images", "test", limit=4)
    assert first.x.shape == (4, 3, 224, 224)
    assert np.array_equal(first.x, again.x) and not np.array_equal(first.x, test.x)


def test_bundled_sets_read_the_same_files_as_sklearn() -> None:
    from sklearn.datasets import load_digits, load_sample_images

    from edgetune.data.sources import sklearn_data_file

    digits = load_digits()
    ours = np.concatenate([load_dataset("digits", role).x for role in ("test", "calibration", "train")])
    labels = np.concatenate([load_dataset("digits", role).y for role in ("test", "calibration", "train")])  # type: ignore[misc]
    order = np.random.default_rng(0).permutation(len(digits.images))
    np.testing.assert_array_equal(ours, digits.images[order][:, None].astype(np.float32) / 16)
    np.testing.assert_array_equal(labels, digits.target[order])
    from PIL import Image

    photos = sorted(sklearn_data_file("datasets/images").glob("*.jpg"))
    for expected, path in zip(load_sample_images().images, photos):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)


def test_crops_cut_on_threads_are_the_crops_cut_one_by_one() -> None:
    from edgetune.data import images
    from edgetune.data.recipes import load_recipe

    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8), rng.integers(0, 256, size=(70, 60, 3), dtype=np.uint8)]
    pre = load_recipe("sample-images").preprocess
    boxes = images.crop_boxes([p.shape for p in photos], 24, seed=3, area=(0.15, 1.0), aspect=(0.75, 4 / 3), flip=True)
    assert any(b.flip for b in boxes) and not all(b.flip for b in boxes)
    one_by_one = np.stack(
        [images.to_array(crop, pre) for crop in images.random_resized_crops(photos, 24, 3, 32, (0.15, 1.0), (0.75, 4 / 3), True)]
    )
    threaded = images.random_resized_crop_arrays(photos, boxes, 32, pre, workers=3)
    assert threaded.shape == (24, 3, 32, 32) and threaded.tobytes() == one_by_one.tobytes()
