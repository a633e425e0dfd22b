"""``edgetune inspect``: ops, parameters, MACs, size and quantization of an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit, table


@click.command("inspect")
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@common_options
def command(artifact: Path, as_json: bool) -> None:
    """Show what ARTIFACT (.onnx, .tflite or .edgetune) holds: ops, parameters, MACs, size and quantization."""
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
    if doc["format"] == "onnx":
        q = doc["quantization"]
        rows.append(
            (
                "quantization",
                f"QDQ {q['qdq']}, int8 weight tensors {q['int8_weight_tensors']}"
                + (f", int4 weight tensors {q['int4_weight_tensors']}" if q.get("int4_weight_tensors") else "")
                + f", activation types {q['activation_types'] or '-'}",
            )
        )
    if doc["format"] == "tflite":
        q, d = doc["quantization"], doc["delegation"]
        rows.append(("input / output types", f"{doc['input_type']} / {doc['output_type']}"))
        rows.append(("quantization", f"{q['int8_tensors']} int8 tensors, {q['per_channel_tensors']} per channel"))
        not_delegated = ", ".join(d["not_delegated"]) or "none"
        rows.append(
            ("XNNPACK", f"{d['delegated']} of {d['ops']} ops delegated in {d['partitions']} partition(s); not delegated: {not_delegated}")
        )
        rows.append(("op versions", ", ".join(f"{op} v{v}" for op, v in doc["op_versions"].items())))
    if "quantized_tensors" in doc:
        rows.append(("quantization", f"{doc['quantized_tensors']} quantized tensors, {doc['per_channel_tensors']} per channel"))
    return table(rows)
