"""``edgetune eval``: accuracy of an artifact, and agreement with a reference."""

from __future__ import annotations

from typing import Any

import click

from edgetune.cli.output import common_options, emit, fmt, pct, table


@click.command("eval")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Evaluation data: bundled set, .npz, image folder or module:callable.")
@click.option("--reference", metavar="ARTIFACT", help="A reference artifact (e.g. model.fp32.onnx) for agreement and SQNR.")
@click.option("--preprocess", metavar="NAME|FILE", help="Preprocessing of an image folder: imagenet, or a .toml (calibration/<name>.toml).")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: all cores).")
@click.option(
    "--device",
    metavar="qemu:TARGET|ssh://user@host[:port]",
    help="Run on a board, emulated (edgetune device setup qemu) or over SSH: its accuracy, and parity with this host per kernel path.",
)
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="An ssh config file instead of ~/.ssh/config.")
@common_options
def command(
    artifact: str,
    data: str,
    reference: str | None,
    preprocess: str | None,
    threads: int | None,
    device: str | None,
    ssh_config: str | None,
    as_json: bool,
) -> None:
    """Evaluate ARTIFACT (.onnx, .tflite or .edgetune) on DATA."""
    from edgetune.api import evaluate

    document = evaluate(artifact, data, reference=reference, preprocess=preprocess, threads=threads, device=device, ssh_config=ssh_config)
    emit(document, as_json, _human)


def _human(doc: dict[str, Any]) -> str:
    rows = [("artifact", doc["artifact"]), ("data", f"{doc['samples']} samples of {doc['data']}")]
    if "accuracy" in doc:
        where = f" on {doc['device']} ({doc['kernels']} kernels)" if "device" in doc else ""
        rows.append(("accuracy", pct(doc["accuracy"]) + where))
    if "reference" in doc:
        ref = doc["reference"]
        rows.append(("reference", ref["artifact"]))
        if "accuracy" in ref:
            rows.append(("reference accuracy", pct(ref["accuracy"])))
        rows.append(("top-1 agreement", pct(ref["top1_agreement"])))
        rows.append(("output SQNR", fmt(ref["sqnr_db"], 2, " dB")))
    if "parity" in doc:
        from edgetune.cli.bench import parity_rows

        rows += [(f"parity {name}" if name not in ("checked on", "inputs") else name, text) for name, text in parity_rows(doc["parity"])]
        rows += [("warning", warning) for warning in doc["parity"].get("warnings", [])]
        rows.append(("note", doc["parity"]["note"]))
    return table(rows)
