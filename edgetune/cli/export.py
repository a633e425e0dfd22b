"""``edgetune export``: artifacts from a compressed model, without recalibrating."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli.output import common_options, emit


@click.command("export")
@click.argument("compressed", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Artifacts to write: onnx, tflite or both.")
@click.option("--target", default="host", show_default=True, help="Target profile (ONNX activation signedness, TFLite input/output type).")
@click.option(
    "--tflite-io", type=click.Choice(["float", "int8"]), help="TFLite model input/output type (default: int8 for MCU targets, else float)."
)
@click.option("--float-tflite", is_flag=True, help="Also write model.fp32.tflite.")
@click.option(
    "--c-array",
    is_flag=True,
    help="Also write the TFLite model as a C array for TFLite Micro: model_data.cc (16-byte aligned) and model_data.h"
    " (its size, ops, arena estimate and an op resolver).",
)
@common_options
def command(
    compressed: Path, out_dir: Path, formats: str, target: str, tflite_io: str | None, float_tflite: bool, c_array: bool, as_json: bool
) -> None:
    """Write ONNX and TFLite artifacts from COMPRESSED (a model.edgetune file)."""
    from edgetune.export.config import ExportConfig, parse_formats
    from edgetune.pipeline import export_compressed

    export = ExportConfig(parse_formats(formats), tflite_io, float_tflite, c_array)
    paths = export_compressed(compressed, out_dir, target=target, export=export)
    doc = {
        "schema": "edgetune.export",
        "version": 1,
        "source": str(compressed),
        "written": {name: str(path) for name, path in paths.items()},
    }
    emit(doc, as_json, lambda d: "wrote " + ", ".join(d["written"].values()))
