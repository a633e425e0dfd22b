from __future__ import annotations

import torch

from edgetune import zoo
from edgetune.zoo.train import accuracy, train_digits_cnn


def test_digits_cnn_retrains_reproducibly_to_the_shipped_accuracy() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shipped weights were trained on one thread
    try:
        model = train_digits_cnn(seed=0)
    finally:
        torch.set_num_threads(threads)
    retrained, shipped = accuracy(model), accuracy(zoo.digits_cnn())
    assert retrained >= 0.97 and shipped >= 0.97
    assert abs(retrained - shipped) <= 0.01


def test_zoo_models_have_their_declared_shapes() -> None:
    dense = {"tiny_detector": (8, 16 * 16 + 8 * 8), "tiny_unet": (4, 64, 64)}  # (5 + classes, cells); a map per class
    for entry in zoo.ZOO.values():
        model = entry.build()
        with torch.no_grad():
            out = model(torch.zeros(2, *entry.input_shape))
        assert out.shape[0] == 2, entry.name
        assert tuple(out.shape[1:]) == dense[entry.name] if entry.name in dense else out.ndim == 2, entry.name
