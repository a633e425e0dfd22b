"""Fuzz every reading command with a seeded corpus of damaged files, in one process.

``python tests/fuzz_worker.py FOLDER --seed 0 --per-format 40`` makes valid files of every format
edgetune reads, damages copies of them (truncation, zeroed spans, flipped and inserted bytes,
empty files), runs each reading command on each copy through ``edgetune.cli.main.run`` and
writes one JSON line per case to FOLDER/results.jsonl: the case, the exit code and what the
command wrote to stdout and stderr (captured at the file-descriptor level, so native logs count).
A line ``{"start": ...}`` comes before each case, so a native crash names the case it died in.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODEL = "edgetune.zoo:digits_cnn"


def damage(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random kind of damage to ``blob``."""
    kind = rng.choice(["truncate", "zero-span", "flip-bytes", "insert", "empty", "zero-tail", "duplicate-span"])
    n = len(blob)
    if kind == "empty" or n == 0:
        return "empty", b""
    if kind == "truncate":
        cut = rng.randrange(0, n)
        return f"truncate@{cut}", blob[:cut]
    if kind == "zero-tail":
        cut = rng.randrange(n // 2, n)
        return f"zero-tail@{cut}", blob[:cut] + b"\0" * (n - cut)
    if kind == "zero-span":
        start = rng.randrange(0, n)
        length = rng.randrange(1, max(2, n // 8))
        return f"zero@{start}+{length}", blob[:start] + b"\0" * min(length, n - start) + blob[start + length :]
    if kind == "insert":
        at = rng.randrange(0, n)
        extra = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        return f"insert@{at}+{len(extra)}", blob[:at] + extra + blob[at:]
    if kind == "duplicate-span":
        start = rng.randrange(0, n)
        return f"duplicate@{start}", blob[: start + 64] + blob[start:]
    data = bytearray(blob)
    for _ in range(rng.randrange(1, 16)):
        data[rng.randrange(n)] = rng.randrange(256)
    return "flip", bytes(data)


def damage_text(text: str, rng: random.Random) -> tuple[str, bytes]:
    """Damage to a TOML file: its bytes, or a value replaced by one of the wrong kind."""
    if rng.random() < 0.5:
        return damage(text.encode(), rng)
    lines = text.splitlines()
    index = rng.randrange(len(lines))
    replacement = rng.choice(["nan", "inf", "-1", '"text"', "[1, 2]", "{a = 1}", "true", "1e400", "0", '""', "[]"])
    key, sep, _ = lines[index].partition("=")
    lines[index] = f"{key}= {replacement}" if sep else f"[{replacement}]"
    return f"value@{index}={replacement}", "\n".join(lines).encode()


def base_files(folder: Path) -> dict[str, Path]:
    """A valid file of every format edgetune reads, made here."""
    import torch

    from edgetune.cli.main import run
    from edgetune.zoo.digits import digits_cnn

    out = folder / "compressed"
    assert run(["compress", MODEL, "--calib", "digits", "--calib-samples", "32", "-o", str(out), "--quiet"]) == 0
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.normal(size=(16, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 16))
    from safetensors.torch import save_file

    model = digits_cnn().eval()
    save_file(model.state_dict(), str(folder / "weights.safetensors"))
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(folder / "model.pt2"))
    (folder / "gate.toml").write_text(
        "[gate]\nrepetitions = 9\nrepetition_seconds = 1.0\nalpha = 0.01\n\n[targets.host]\nmin_accuracy = 0.5\nmax_latency_p50_ms = 5\n"
    )
    figures = {"kind": "measured", "p50_ms": 0.1, "repetition_medians_ms": [0.1] * 9, "repetition_ms": [0.1] * 9, "p90_ms": 0.1}
    (folder / "measurements.json").write_text(json.dumps({"measurements": {"host": {"model.onnx": figures, "model.tflite": figures}}}))
    (folder / "recipe.toml").write_text(
        'name = "mine"\n[preprocess]\nresize = 10\ncrop = 8\nchannel_order = "L"\nscale = 0.004\nmean = [0.5]\nstd = [0.25]\n'
    )
    images = folder / "images" / "a"
    images.mkdir(parents=True)
    from PIL import Image

    for index in range(2):
        Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(images / f"{index}.png")
    (folder / "target.toml").write_text((Path(__file__).parents[1] / "targets" / "raspberry-pi-4.toml").read_text())
    return {
        "onnx": out / "model.onnx",
        "fp32.onnx": out / "model.fp32.onnx",
        "tflite": out / "model.tflite",
        "edgetune": out / "model.edgetune",
        "npz": folder / "data.npz",
        "safetensors": folder / "weights.safetensors",
        "pt2": folder / "model.pt2",
        "gate.toml": folder / "gate.toml",
        "recipe.toml": folder / "recipe.toml",
        "target.toml": folder / "target.toml",
        "report.json": out / "report.json",
        "measurements.json": folder / "measurements.json",
        "images": folder / "images",
    }


def commands(kind: str, path: str, base: dict[str, Path], out: str) -> list[list[str]]:
    """Every reading command that takes a file of this kind."""
    data = ["--data", "digits:test"]
    table: dict[str, list[list[str]]] = {
        "onnx": [["inspect", path], ["eval", path, *data]],
        "fp32.onnx": [["inspect", path], ["compress", path, "--calib", "digits", "--calib-samples", "16", "--formats", "onnx", "-o", out]],
        "tflite": [["inspect", path], ["eval", path, *data]],
        "edgetune": [["inspect", path], ["eval", path, *data], ["export", path, "--formats", "onnx", "-o", out]],
        "npz": [["eval", str(base["onnx"]), "--data", path]],
        "safetensors": [
            ["compress", "edgetune.zoo.digits:digits_cnn", "--weights", path, "--calib", "digits", "--calib-samples", "16", "-o", out]
        ],
        "pt2": [["compress", path, "--calib", "digits", "--calib-samples", "16", "--formats", "onnx", "-o", out]],
        "gate.toml": [["gate", "--config", path, "--report", str(base["report.json"]), "--measurements", str(base["measurements.json"])]],
        "recipe.toml": [["eval", str(base["onnx"]), "--data", str(base["images"]), "--preprocess", path]],
        "target.toml": [["bench", str(base["tflite"]), "--target", path]],
        "measurements.json": [["gate", "--config", str(base["gate.toml"]), "--report", str(base["report.json"]), "--measurements", path]],
        "report.json": [["gate", "--config", str(base["gate.toml"]), "--report", path, "--measurements", str(base["measurements.json"])]],
    }
    return table[kind]


def run_captured(argv: list[str]) -> tuple[int, str, str]:
    """``edgetune ARGV --json --quiet``, with fd 1 and 2 captured."""
    from edgetune.cli.main import run

    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = run([*argv, "--json", *(["--quiet"] if argv[0] in ("compress", "gate") else [])])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def _one_document(text: str) -> bool:
    """Whether ``text`` is exactly one JSON object (what ``--json`` promises on stdout)."""
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-format", type=int, default=20)
    args = parser.parse_args()
    base = base_files(args.folder)
    rng = random.Random(args.seed)
    results = (args.folder / "results.jsonl").open("w")
    kinds = [k for k in base if k not in ("images",)]
    for kind in kinds:
        source = base[kind]
        for index in range(args.per_format):
            mutate: Callable[[bytes, random.Random], tuple[str, bytes]] = damage
            how, blob = damage_text(source.read_text(), rng) if kind.endswith(".toml") else mutate(source.read_bytes(), rng)
            suffix = {"edgetune": ".edgetune", "fp32.onnx": ".onnx"}.get(kind, "." + kind.split(".")[-1])
            path = args.folder / "cases" / f"{kind.replace('.', '-')}-{index}{suffix}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(blob)
            for argv in commands(kind, str(path), base, str(args.folder / "out" / f"{kind}-{index}")):
                case = {"kind": kind, "damage": how, "argv": argv}
                results.write(json.dumps({"start": case}) + "\n")
                results.flush()
                code, out, err = run_captured(argv)
                results.write(
                    json.dumps({**case, "code": code, "stdout_json": _one_document(out), "stdout": out[-500:], "stderr": err[-2000:]})
                    + "\n"
                )
                results.flush()
    results.write(json.dumps({"done": True}) + "\n")


if __name__ == "__main__":
    main()
