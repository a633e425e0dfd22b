"""``edgetune finetune``: fine-tune a model, then compress it; or recover a compressed model
(model.edgetune) with quantization-aware training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.compress import human
from edgetune.cli.finetune_options import finetune_options
from edgetune.cli.output import common_options, emit
from edgetune.progress import StderrProgress


@click.command("finetune")
@click.argument("model", metavar="MODEL")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--teacher", metavar="MODEL", help="The uncompressed model to distil from (as for compress).")
@click.option("--teacher-weights", metavar="FILE", help="State dict for a callable --teacher.")
@click.option("--eval", "eval_data", metavar="DATA", help="Evaluation data (labels give accuracy).")
@click.option(
    "--calib", metavar="DATA", help="Calibration data for the int8 artifacts (default: the --train data). Not for a model.edgetune."
)
@click.option("--weights", metavar="FILE", help="State dict for a callable MODEL (.safetensors, .pt or .pth).")
@click.option("--tokenizer", metavar="FILE", help="tokenizer.json that turns .txt and .jsonl data into token ids.")
@click.option("--seq-len", type=int, metavar="N", help="Token length .txt and .jsonl passages are padded or truncated to (default 128).")
@click.option("--preprocess", metavar="NAME|FILE", help="Preprocessing of an image folder: imagenet, or a .toml (calibration/<name>.toml).")
@click.option("--target", default="host", show_default=True, help="Hardware target profile.")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Artifacts to write: onnx, tflite or both.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@finetune_options(budget_required=True)
@common_options
def command(
    model: str,
    out_dir: Path,
    teacher: str | None,
    teacher_weights: str | None,
    eval_data: str | None,
    calib: str | None,
    weights: str | None,
    tokenizer: str | None,
    seq_len: int | None,
    preprocess: str | None,
    target: str,
    formats: str,
    quiet: bool,
    as_json: bool,
    **tuning: Any,
) -> None:
    """Fine-tune MODEL on --train within the --finetune budget, then compress it.

    MODEL is what compress takes (file.py:callable, a .pt2, an fp32 .onnx, a Hugging Face
    folder): the fine-tune trains it in float (a classification head is added to an encoder
    that has none), and OUT/model.fp32.onnx is the fine-tuned fp32 model, beside the int8
    OUT/model.onnx and OUT/model.tflite. A model.edgetune that compress wrote is recovered
    quantization-aware instead. Also written: OUT/model.edgetune, OUT/report.json and
    OUT/recipe.toml (replay: edgetune compress --recipe OUT/recipe.toml -o OUT2)."""
    from edgetune.errors import InputError
    from edgetune.recipe import Recipe, run
    from edgetune.recipe.options import from_options
    from edgetune.recipe.recipe import COMMAND_LINE

    if not tuning["train_data"]:
        raise InputError("finetune needs training data", "pass --train DATA (e.g. digits:train)")
    compressed = Path(model).suffix == ".edgetune"
    options = {**tuning, "model": model, "teacher": teacher, "teacher_weights": teacher_weights, "eval": eval_data}
    options |= {"preprocess": preprocess, "target": target, "formats": formats, "qat": tuning["qat"] or compressed}
    if compressed and (calib or weights):
        raise InputError("a model.edgetune keeps its calibration and weights", "drop --calib and --weights")
    if not compressed:
        options |= {"calib": calib or tuning["train_data"], "weights": weights}
    options |= {"tokenizer": tokenizer, "seq_len": seq_len}
    recipe = Recipe().updated(from_options(options), COMMAND_LINE)
    result = run(recipe, out_dir, resume=tuning["resume"], progress=StderrProgress(enabled=not quiet))
    if result.paths:  # under torchrun, the other processes stay silent
        emit(result.report, as_json, human)
