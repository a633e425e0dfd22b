"""Reproducible training of the digits CNN (a few seconds on one CPU core).

The shipped weights in ``weights/digits_cnn.safetensors`` were made by
``python -m edgetune.zoo.train``; a test retrains and checks the accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetune.data import load_dataset
from edgetune.zoo.digits import DigitsCNN

WEIGHTS = Path(__file__).parent / "weights" / "digits_cnn.safetensors"


def train_digits_cnn(seed: int = 0, epochs: int = 40, batch: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    train = load_dataset("digits", "train")
    assert train.y is not None
    model = DigitsCNN()
    x = torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (-(-len(x) // batch)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            # One-pixel random shifts: a cheap augmentation that generalises better on 8x8 digits.
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            inputs = torch.roll(x[index], shifts=shift, dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(inputs), y[index]).backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: nn.Module, split: str = "test") -> float:
    data = load_dataset("digits", split)  # type: ignore[arg-type]
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(1).numpy()
    return float(np.mean(pred == data.y))


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    model = train_digits_cnn()
    WEIGHTS.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS))
    print(f"test accuracy {accuracy(model):.4f}; wrote {WEIGHTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
