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
@click.option("--plot", metavar="FILE.png", help="Draw the confusion matrix (labelled data) to FILE.png (needs matplotlib).")
@click.option("--tokenizer", metavar="FILE", help="tokenizer.json that turns .txt and .jsonl data into token ids.")
@click.option("--seq-len", type=int, metavar="N", help="Token length .txt and .jsonl passages are padded or truncated to (default 128).")
@click.option(
    "--pairs",
    type=click.Choice(["joined", "separate"]),
    default="joined",
    show_default=True,
    help="A .jsonl text_pair: joined to its text (a cross-encoder), or embedded alone and the pair scored by cosine (a bi-encoder).",
)
@common_options
def command(
    artifact: str,
    data: str,
    reference: str | None,
    preprocess: str | None,
    threads: int | None,
    device: str | None,
    ssh_config: str | None,
    plot: str | None,
    tokenizer: str | None,
    seq_len: int | None,
    pairs: str,
    as_json: bool,
) -> None:
    """Evaluate ARTIFACT (.onnx, .tflite or .edgetune) on DATA: accuracy, per-class accuracy and
    precision and the confusion matrix when DATA has labels, and agreement with a reference."""
    from edgetune.api import evaluate

    document = evaluate(
        artifact,
        data,
        reference=reference,
        preprocess=preprocess,
        threads=threads,
        device=device,
        ssh_config=ssh_config,
        tokenizer=tokenizer,
        seq_len=seq_len,
        pairs=pairs,
    )
    if plot is not None:
        document["plot"] = _plot(document, plot)
    emit(document, as_json, _human)


def _plot(document: dict[str, Any], path: str) -> str:
    from pathlib import Path

    import numpy as np

    from edgetune.artifacts import write_file
    from edgetune.errors import InputError
    from edgetune.evaluate.confusion import confusion_png

    if "confusion_matrix" not in document:
        raise InputError(
            f"{document['data']} has no class labels: there is no confusion matrix to plot", "give labelled data, or drop --plot"
        )
    names = [str(row["name"]) for row in document["per_class"]]
    title = f"{Path(document['artifact']).name} on {document['samples']} samples: accuracy {pct(document['accuracy'])}"
    write_file(Path(path), confusion_png(np.array(document["confusion_matrix"]["counts"]), names, title))
    return path


def _human(doc: dict[str, Any]) -> str:
    rows = [("artifact", doc["artifact"]), ("data", f"{doc['samples']} samples of {doc['data']}")]
    if "accuracy" in doc:
        where = f" on {doc['device']} ({doc['kernels']} kernels)" if "device" in doc else ""
        rows.append(("accuracy", pct(doc["accuracy"]) + where))
    rows += _class_rows(doc)
    if "reference" in doc:
        ref = doc["reference"]
        rows.append(("reference", ref["artifact"]))
        if "accuracy" in ref:
            rows.append(("reference accuracy", pct(ref["accuracy"])))
        rows.append(("top-1 agreement", pct(ref["top1_agreement"])))
        rows.append(("output SQNR", fmt(ref["sqnr_db"], 2, " dB")))
        rows.append(("cosine to reference", f"mean {ref['cosine_mean']:.4f}, 1st percentile {ref['cosine_p1']:.4f}"))
        if ref.get("neighbour_agreement") is not None:
            rows.append(("nearest-neighbour agreement", pct(ref["neighbour_agreement"])))
    if "similarity" in doc:
        block = doc["similarity"]
        metric = block["metric"]
        shown = ", ".join(f"{name} {block[name][metric]:.4f}" for name in ("artifact", "reference") if name in block)
        rows.append(("similarity", f"{'Spearman' if metric == 'spearman' else 'recall@1'} on {block['pairs']} pairs: {shown}"))
    if "parity" in doc:
        from edgetune.cli.bench import parity_rows

        rows += [(f"parity {name}" if name not in ("checked on", "inputs") else name, text) for name, text in parity_rows(doc["parity"])]
        rows += [("warning", warning) for warning in doc["parity"].get("warnings", [])]
        rows.append(("note", doc["parity"]["note"]))
    return table(rows) + _matrix_text(doc)


def _class_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Each class's accuracy and precision, the weakest first (the five weakest of many classes)."""
    if "per_class" not in doc:
        return []
    present = sorted((row for row in doc["per_class"] if row["samples"]), key=lambda row: row["accuracy"])
    shown = present if len(present) <= 12 else present[:5]
    rows = [
        (f"class {row['name']}", f"accuracy {pct(row['accuracy'])} of {row['samples']}, precision {_share(row['precision'])}")
        for row in shown
    ]
    if len(shown) < len(present):
        rows.append(("classes", f"the {len(shown)} weakest of {len(present)} shown (--json has them all)"))
    return rows


def _share(value: float | None) -> str:
    return "-" if value is None else pct(value)


def _matrix_text(doc: dict[str, Any]) -> str:
    """The confusion matrix as text, for up to 12 classes: true classes down, predicted across."""
    text = ""
    if "confusion_matrix" in doc and len(doc["per_class"]) <= 12:
        names = [str(row["name"]) for row in doc["per_class"]]
        counts = doc["confusion_matrix"]["counts"]
        rows = [[name, *map(str, row)] for name, row in zip(names, counts)]
        text = "\n\nconfusion matrix\n" + table(rows, ["true \\ predicted", *names])
    return text + (f"\nwrote {doc['plot']}" if doc.get("plot") else "")
