"""Torch-Pruning on the digits CNN, run inside the peers' environment (.venv-tp), not edgetune's.

Usage: python torch_pruning_digits.py STATE.pt DATA.npz RATIO CRITERION
Prints one JSON line: accuracy after pruning (no fine-tune), MACs and parameters before/after.
The model class comes from edgetune's zoo on PYTHONPATH (edgetune itself is not installed there).
"""

import json
import sys

import numpy as np
import torch
import torch_pruning as tp

from edgetune.zoo.digits import DigitsCNN


def main() -> None:
    state_path, data_path, ratio, criterion = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    model = DigitsCNN()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    data = np.load(data_path)
    x, y = torch.from_numpy(data["x"]), data["y"]
    example = x[:1]
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    importance = tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[model.head[-1]])
    pruner.step()
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    with torch.no_grad():
        accuracy = float(np.mean(model(x).argmax(1).numpy() == y))
    print(
        json.dumps(
            {
                "accuracy": accuracy,
                "macs": [macs_before, macs_after],
                "parameters": [params_before, params_after],
                "version": tp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
