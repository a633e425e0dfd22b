"""The Python API: the same operations as the CLI, returning plain dictionaries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.data import load_dataset
from edgetune.errors import InputError
from edgetune.evaluate.metrics import accuracy, agreement, confusion_matrix, embedding_agreement, finite_or_none, per_class, sqnr_db
from edgetune.evaluate.runtime import OnnxRunner
from edgetune.evaluate.tflite_runtime import TfliteRunner
from edgetune.inspect_artifact import inspect_path

if TYPE_CHECKING:
    from edgetune.pipeline import CompressResult

__all__ = ["CompressResult", "benchmark", "compress", "evaluate", "inspect_artifact"]


def compress(model: Any, calib: Any = None, out_dir: str | Path | None = None, **options: Any) -> CompressResult:
    """Compress as a recipe says, ``compress(recipe, out_dir="out/")`` with a
    :class:`edgetune.recipe.Recipe` or a recipe file's path (the folder gets ``recipe.toml``);
    or from the keyword arguments of :func:`edgetune.pipeline.compress`, as before:
    ``compress("net.py:build", "calib.npz", "out/", eval_data="test.npz")``."""
    from edgetune.pipeline import compress as compress_with
    from edgetune.recipe import Recipe, load
    from edgetune.recipe.build import run

    if isinstance(model, Recipe) or (isinstance(model, (str, Path)) and str(model).endswith(".toml")):
        if out_dir is None or calib is not None or options:
            raise InputError("a recipe carries every setting", "call compress(recipe, out_dir=...) with nothing else")
        return run(model if isinstance(model, Recipe) else load(model), out_dir)
    if calib is None or out_dir is None:
        raise InputError("compress needs calibration data and an output folder", "call compress(model, calib, out_dir, ...)")
    return compress_with(model, calib, out_dir, **options)


def _runner(artifact: str | Path, threads: int | None) -> OnnxRunner | TfliteRunner:
    path = Path(artifact)
    if not path.is_file():
        raise InputError(f"artifact {path} does not exist", "check the path")
    if path.stat().st_size == 0:
        raise InputError(f"artifact {path} is empty", "give the file edgetune or your exporter wrote")
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads=threads)
    if path.suffix == ".tflite":
        runner = TfliteRunner(path.read_bytes(), threads=threads)
        runner.probe(str(path))
        return runner
    if path.suffix == ".edgetune":
        from edgetune.export.onnx.writer import write_onnx
        from edgetune.ir.serialize import load_graph

        graph = load_graph(path)
        quantized = any(t.quant is not None for t in graph.tensors.values())
        return OnnxRunner(write_onnx(graph, quantized=quantized), threads=threads)
    raise InputError(f"cannot run {path.suffix or 'a file without suffix'} artifacts", "give an .onnx, .tflite or .edgetune file")


def evaluate(
    artifact: str | Path,
    data: str,
    *,
    reference: str | Path | None = None,
    preprocess: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    ssh_config: str | Path | None = None,
    tokenizer: str | None = None,
    seq_len: int | None = None,
    pairs: str = "joined",
) -> dict[str, Any]:
    """Accuracy of ``artifact`` on ``data`` (with labels), and agreement, SQNR and cosine
    similarity against ``reference``. With ``device`` (``qemu:TARGET`` for an emulated board, or
    ``ssh://user@host``) the artifact runs on that board: the accuracy is the board's, and a
    parity block compares its outputs with this host's on every kernel path. Text data (.txt,
    .jsonl) is tokenized with ``tokenizer`` to ``seq_len`` tokens; with ``pairs="separate"`` a
    ``text_pair`` is embedded on its own, and the pairs are scored by the cosine of their two
    embeddings (Spearman against their scores, or recall at 1 without)."""
    from edgetune.data.inputs import match_inputs
    from edgetune.data.text import TextSpec

    runner = _runner(artifact, threads)
    reference_runner = _runner(reference, threads) if reference is not None else None
    dataset = load_dataset(data, "test", preprocess, text=TextSpec(tokenizer, seq_len or TextSpec().seq_len, pairs))
    dataset = match_inputs(dataset, runner.input_names, runner.input_names, "evaluation")
    scored, dataset = (dataset, dataset.sides()) if dataset.pair is not None else (None, dataset)
    runner.check_samples(dataset.x, dataset.source)
    if dataset.has_classes:  # one sample tells the output size: labels are checked before the run
        dataset.check_labels(runner.run(dataset.x[:1]).size, "evaluation")
    doc: dict[str, Any] = {
        "schema": "edgetune.eval",
        "version": 1,
        "artifact": str(artifact),
        "data": dataset.source,
        "samples": len(dataset),
    }
    if device is None:
        outputs = runner.run(dataset.x)
    else:
        outputs = _on_device(Path(artifact), device, dataset.x, dataset.source, doc, ssh_config)
    if dataset.y is not None and dataset.has_classes:
        doc["accuracy"] = accuracy(outputs, dataset.y)
        matrix = confusion_matrix(outputs, dataset.y)
        doc["per_class"] = per_class(matrix, tuple(dataset.labels))
        doc["confusion_matrix"] = {"rows": "true class", "columns": "predicted class", "counts": matrix.tolist()}
    if reference_runner is not None:
        doc["reference"] = _against_reference(reference_runner, str(reference), dataset, outputs)
    if scored is not None:
        doc["similarity"] = _pair_scores(scored, outputs, reference_runner.run(dataset.x) if reference_runner is not None else None)
    return doc


def _pair_scores(pairs: Any, outputs: Any, reference: Any) -> dict[str, Any]:
    """Similarity pairs (both sides run, first then second): the artifact's score, and the reference's."""
    from edgetune.finetune.similarity import scored_outputs

    return scored_outputs({"artifact": outputs, "reference": reference}, len(pairs), pairs.y)


def _against_reference(runner: OnnxRunner | TfliteRunner, name: str, dataset: Any, outputs: Any) -> dict[str, Any]:
    """The artifact's outputs against the reference's on the same samples: top-1 agreement,
    SQNR, and cosine and nearest-neighbour agreement as embeddings."""
    runner.check_samples(dataset.x, dataset.source)
    expected = runner.run(dataset.x)
    if expected.shape != outputs.shape:
        raise InputError(
            f"the reference outputs {list(expected.shape)} but the artifact {list(outputs.shape)}", "compare artifacts of the same model"
        )
    block: dict[str, Any] = {
        "artifact": name,
        "top1_agreement": agreement(outputs, expected),
        "sqnr_db": finite_or_none(sqnr_db(expected, outputs)),
        "max_abs_diff": float(abs(expected - outputs).max()),
        **embedding_agreement(expected.reshape(len(expected), -1), outputs.reshape(len(outputs), -1)),
    }
    if dataset.y is not None and dataset.has_classes:
        block["accuracy"] = accuracy(expected, dataset.y)
    return block


def _on_device(artifact: Path, device: str, samples: Any, source: str, doc: dict[str, Any], ssh_config: str | Path | None) -> Any:
    """Outputs of the board's default kernel path (float, as the host runner gives them); the
    parity report goes into ``doc``."""
    from edgetune.profile.parity import ParityRequest, dequantized, parity, parse_device, public

    board = parse_device(device)
    result = parity(ParityRequest(artifact, board, samples, source, ssh_config=Path(ssh_config) if ssh_config else None))
    first = next(iter(result["outputs"]))
    doc["device"] = result["device"]
    doc["kernels"] = first
    doc["parity"] = {k: v for k, v in public(result).items() if k != "seconds"}  # eval documents carry no timings
    return dequantized(artifact, result["outputs"][first])


def benchmark(
    artifact: str | Path,
    *,
    target: str = "host",
    devices: tuple[str, ...] = (),
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
    min_seconds: float = 0.0,
    op_profile: bool = False,
    timeout_s: float = 600.0,
    memory_cap_mb: float = 4096.0,
    ssh_config: str | Path | None = None,
    samples: int = 16,
) -> list[dict[str, Any]]:
    """Latency and memory of ``artifact``: measured on this host, measured on each of
    ``devices`` (``ssh://user@host[:port]``, ``adb:SERIAL``), or estimated for a non-host
    ``target`` without devices. One document per device. A ``qemu:TARGET`` device checks
    results only (parity with this host on ``samples`` seeded inputs), never latency."""
    from edgetune.profile import BenchRequest, bench

    request = BenchRequest(
        Path(artifact),
        target,
        tuple(devices),
        threads,
        runs,
        warmup,
        min_seconds,
        op_profile,
        timeout_s,
        memory_cap_mb,
        ssh_config=Path(ssh_config) if ssh_config else None,
        samples=samples,
    )
    return bench(request)


def inspect_artifact(artifact: str | Path) -> dict[str, Any]:
    return inspect_path(Path(artifact))


def __getattr__(name: str) -> Any:
    if name == "CompressResult":  # the pipeline imports torch: only when it is asked for
        from edgetune.pipeline import CompressResult

        return CompressResult
    raise AttributeError(f"module 'edgetune.api' has no attribute {name!r}")
