"""Train your_net.py's model on scikit-learn's digits for a few seconds: net.safetensors.

The last 360 images are left out: the tour's test.npz holds them.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
from your_net import build  # noqa: E402

digits = load_digits()
x = torch.tensor((digits.images / 16.0).astype(np.float32)[:-360, None])
y = torch.tensor(digits.target[:-360])
torch.manual_seed(0)
model = build()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
for _epoch in range(20):
    for batch in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    accuracy = (model(x).argmax(1) == y).float().mean().item()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "net.safetensors")
print(f"trained: {accuracy:.1%} on the training images; wrote net.safetensors")
