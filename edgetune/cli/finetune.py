"""``edgetune finetune``: recover a compressed model (model.edgetune) with quantization-aware training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.compress import human
from edgetune.cli.finetune_options import finetune_options
from edgetune.cli.output import common_options, emit
from edgetune.progress import StderrProgress


@click.command("finetune")
@click.argument("compressed", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--teacher", metavar="MODEL", help="The uncompressed model to distil from (as for compress).")
@click.option("--teacher-weights", metavar="FILE", help="State dict for a callable --teacher.")
@click.option("--eval", "eval_data", metavar="DATA", help="Evaluation data (labels give accuracy).")
@click.option("--preprocess", metavar="NAME|FILE", help="Preprocessing of an image folder: imagenet, or a .toml (calibration/<name>.toml).")
@click.option("--target", default="host", show_default=True, help="Hardware target profile.")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Artifacts to write: onnx, tflite or both.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@finetune_options(budget_required=True)
@common_options
def command(
    compressed: Path,
    out_dir: Path,
    teacher: str | None,
    teacher_weights: str | None,
    eval_data: str | None,
    preprocess: str | None,
    target: str,
    formats: str,
    quiet: bool,
    as_json: bool,
    **tuning: Any,
) -> None:
    """Fine-tune COMPRESSED (the model.edgetune that compress wrote) quantization-aware, within a
    budget, and write OUT/model.onnx, OUT/model.tflite, OUT/model.edgetune, OUT/report.json and
    OUT/recipe.toml (replay: edgetune compress --recipe OUT/recipe.toml -o OUT2)."""
    from edgetune.errors import InputError
    from edgetune.recipe import Recipe, run
    from edgetune.recipe.options import from_options
    from edgetune.recipe.recipe import COMMAND_LINE

    if not tuning["train_data"]:
        raise InputError("finetune needs training data", "pass --train DATA (e.g. digits:train)")
    options = {**tuning, "model": str(compressed), "teacher": teacher, "teacher_weights": teacher_weights, "eval": eval_data}
    options |= {"preprocess": preprocess, "target": target, "formats": formats, "qat": True}
    recipe = Recipe().updated(from_options(options), COMMAND_LINE)
    result = run(recipe, out_dir, resume=tuning["resume"], progress=StderrProgress(enabled=not quiet))
    if result.paths:  # under torchrun, the other processes stay silent
        emit(result.report, as_json, human)
