"""A corpus of files that run code when a careless loader reads them.

Each pickle gadget opens (creates) a marker file when unpickled; other gadgets reach the same
through sympy's string evaluation or a graph target outside ``torch.ops``. A loader is safe
when no marker ever appears.
"""

from __future__ import annotations

import builtins
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgetune.zoo.digits import digits_cnn


class Gadget:
    """Unpickling this calls ``open(marker, "w")``: code chosen by whoever wrote the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.open, (self.marker, "w"))


def pickled(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def exported(path: Path, dynamic: bool = False) -> Path:
    """A genuine torch.export archive of the digits CNN (random weights)."""
    torch.manual_seed(0)
    model = digits_cnn().eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def rewritten(source: Path, target: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """``source`` with its members changed by ``change`` (names relative to the archive root)."""
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/")[0]
        members = {name[len(root) + 1 :]: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)
    return target


def _edit_json(members: dict[str, bytes], name: str, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    document = json.loads(members[name])
    edit(document)
    members[name] = json.dumps(document).encode()


def pt2_gadgets(folder: Path, marker: Path) -> dict[str, Path]:
    """Crafted .pt2 archives, each with one way of running code on load."""
    plain = exported(folder / "plain.pt2")
    dynamic = exported(folder / "dynamic.pt2", dynamic=True)
    gadget = pickled(Gadget(marker))

    def sample_inputs(members: dict[str, bytes]) -> None:
        members["data/sample_inputs/model.pt"] = gadget

    def pickled_weight(members: dict[str, bytes]) -> None:
        def mark(config: dict) -> None:  # type: ignore[type-arg]
            entry = config["config"]["stem.0.weight"]
            entry["use_pickle"] = True
            members["data/weights/" + entry["path_name"]] = gadget

        _edit_json(members, "data/weights/model_weights_config.json", mark)

    def opaque_constant(members: dict[str, bytes]) -> None:
        import pickle

        members["data/constants/opaque_obj_0"] = pickle.dumps(Gadget(marker))
        members["data/constants/model_constants_config.json"] = json.dumps(
            {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
        ).encode()

    def legacy_weights(members: dict[str, bytes]) -> None:
        members["data/weights/model.pt"] = gadget

    def compiled(members: dict[str, bytes]) -> None:
        members["data/aotinductor/model/model.so"] = b"\x7fELF not really"

    def sympy_expression(members: dict[str, bytes]) -> None:
        text = members["models/model.json"].decode()
        symbol = "Symbol('s77', positive=True, integer=True)"
        assert symbol in text or "Symbol(" in text
        start = text.index("Symbol(")
        end = text.index(")", start) + 1
        evil = text[start:end] + f" + len(str(open('{marker}', 'w')))"
        members["models/model.json"] = (text[:start] + evil + text[end:]).encode()

    def foreign_target(members: dict[str, bytes]) -> None:
        def retarget(document: dict) -> None:  # type: ignore[type-arg]
            document["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

        _edit_json(members, "models/model.json", retarget)

    def guards(members: dict[str, bytes]) -> None:
        def add(document: dict) -> None:  # type: ignore[type-arg]
            document["guards_code"] = [f"open('{marker}', 'w')"]

        _edit_json(members, "models/model.json", add)

    return {
        "sample-inputs": rewritten(plain, folder / "sample_inputs.pt2", sample_inputs),
        "pickled-weight": rewritten(plain, folder / "pickled_weight.pt2", pickled_weight),
        "opaque-constant": rewritten(plain, folder / "opaque_constant.pt2", opaque_constant),
        "legacy-weights": rewritten(plain, folder / "legacy_weights.pt2", legacy_weights),
        "compiled-library": rewritten(plain, folder / "compiled.pt2", compiled),
        "sympy-expression": rewritten(dynamic, folder / "sympy.pt2", sympy_expression),
        "foreign-target": rewritten(plain, folder / "foreign_target.pt2", foreign_target),
        "guards-code": rewritten(plain, folder / "guards.pt2", guards),
    }


def file_gadgets(folder: Path, marker: Path) -> dict[str, Path]:
    """Weights, checkpoints and data files whose pickles run code."""
    gadget = pickled(Gadget(marker))
    files = {
        "weights.pt": gadget,
        "weights.pth": gadget,
        "checkpoint.pth": pickled({"state_dict": Gadget(marker), "epoch": 3}),
        "finetune.ckpt": pickled({"version": 1, "fingerprint": "x", "state": Gadget(marker)}),
    }
    paths = {}
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
        paths[name] = folder / name
    np.savez(folder / "objects.npz", x=np.array([Gadget(marker)], dtype=object))
    paths["objects.npz"] = folder / "objects.npz"
    return paths
