"""``edgetune inspect``: ops, parameters, MACs, size and quantization of an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.command("inspect")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@common_options
def command(artifact: Path, as_json: bool, debug: bool) -> None:
    """Show what ARTIFACT (.onnx or .edgetune) holds."""
    from edgetune.inspect_artifact import inspect_path

    emit(inspect_path(artifact), as_json, _human)


def _human(doc: dict[str, Any]) -> str:
    rows = [
        ("artifact", f"{doc['artifact']} ({doc['bytes'] / 1024:.1f} KiB, {doc['format']})"),
        ("input / output", f"{doc['input_shape']} -> {doc['output_shape']}"),
        ("parameters", f"{doc['parameters']:,}"),
        ("MACs", f"{doc['macs']:,}"),
        ("nodes", str(doc["nodes"])),
        ("ops", ", ".join(f"{op} x{count}" for op, count in doc["ops"].items())),
    ]
    if "quantization" in doc:
        q = doc["quantization"]
        rows.append(
            (
                "quantization",
                f"QDQ {q['qdq']}, int8 weight tensors {q['int8_weight_tensors']}, activation types {q['activation_types'] or '-'}",
            )
        )
    if "quantized_tensors" in doc:
        rows.append(("quantization", f"{doc['quantized_tensors']} quantized tensors, {doc['per_channel_tensors']} per channel"))
    return table(rows)
