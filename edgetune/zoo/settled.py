"""The zoo's untrained models keep their settled BatchNorm statistics in the capture cache.

Settling runs 16 random images through the network in training mode (half a second for
EfficientNet-Lite0 at 224x224, more than the rest of building it), and gives the same tensors
every time on one machine: the seeded initial weights, the seeded images, the same torch
kernels. So the settled state is stored beside the captured graphs, found by a key that hashes
what it depends on, and loaded instead of computed:

- the versions of edgetune, torch and Python, and edgetune's source (as the capture's key);
- what selects torch's kernels and how its reductions split: the CPU capability torch
  dispatches to (AVX512, AVX2, ...) and its thread count;
- the model's initial parameters and buffers (names, dtypes, shapes, bytes), which stand for
  its architecture and arguments, and the settling's input shape and seed.

An entry is a safetensors file (no pickle) whose metadata repeats the versions, checked again
on reading. ``EDGETUNE_CAPTURE_CACHE=off`` turns it off with the capture cache; a folder that
cannot be written or an entry that cannot be read is said once and the model is settled as if
there were no cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgetune.capture.cache import cache_folder, describe_tensors, edgetune_source, mark_used, say, store, versions

FORMAT = "edgetune.zoo-settled"
VERSION = 1
PREFIX = "zoo-"


def settle_cached(
    model: nn.Module, input_shape: tuple[int, ...], seed: int, settle: Callable[[], None], prepare: Callable[[], None]
) -> None:
    """Give ``model`` its settled state: from the cache when an entry has its key (after
    ``prepare()``, which sets what settling sets besides tensors; the model ends in eval
    mode, as settled), else by ``settle()`` (which changes ``model`` in place) and stored."""
    folder = cache_folder()
    if folder is None:
        settle()
        return
    key = settled_key(model, input_shape, seed)
    entry = folder / f"{PREFIX}{key}.safetensors"
    stored = _read(entry) if entry.is_file() else None
    if stored is not None and _fits(model, stored):
        prepare()
        model.load_state_dict(stored, strict=True)
        model.eval()
        return
    settle()
    _write(folder, entry, model)


def _fits(model: nn.Module, stored: dict[str, torch.Tensor]) -> bool:
    """Every tensor of the model and no other, each with its shape and dtype: checked before
    loading, which would otherwise copy what fits and leave the model half overwritten."""
    own = model.state_dict()
    return own.keys() == stored.keys() and all(own[k].shape == stored[k].shape and own[k].dtype == stored[k].dtype for k in own)


def settled_key(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> str:
    digest = hashlib.sha256()
    setting = {"format": FORMAT, "version": VERSION, **versions(), "shape": list(input_shape), "seed": seed}
    setting |= {"cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    digest.update(json.dumps(setting, sort_keys=True).encode())
    digest.update(edgetune_source())
    describe_tensors(digest, list(model.state_dict().items()))
    return digest.hexdigest()[:40]


def _read(entry: Path) -> dict[str, torch.Tensor] | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(entry), framework="pt") as stored:
            header = stored.metadata() or {}
            tensors = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (no __iter__)
    except OSError as exc:
        say(f"the capture cache entry {entry} cannot be read ({exc.strerror}); settling the model again")
        return None
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        say(f"the capture cache entry {entry} is damaged ({type(exc).__name__}); settling the model again")
        return None
    if header != {"format": FORMAT, **versions()}:
        return None  # another torch or edgetune (the key differs too; this is the second lock)
    mark_used(entry)
    return tensors


def _write(folder: Path, entry: Path, model: nn.Module) -> None:
    from safetensors.torch import save

    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    try:
        blob = save(tensors, metadata={"format": FORMAT, **versions()})
    except (ValueError, RuntimeError):
        return  # tensors sharing memory, or a dtype safetensors lacks: settled each time
    store(folder, entry, blob)
