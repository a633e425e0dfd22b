"""``edgetune meta-init`` and ``edgetune adapt``: a meta-learned initialization for few-shot
tasks, and the few-shot adaptation of a model to new classes as int8 artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli.output import common_options, emit
from edgetune.progress import StderrProgress

_OUT = click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
_TOKENIZER = click.option("--tokenizer", metavar="FILE", help="tokenizer.json that turns .txt and .jsonl data into token ids.")
_SEQ_LEN = click.option("--seq-len", type=int, metavar="N", help="Token length of .txt and .jsonl passages (default 128).")


@click.command("meta-init")
@click.argument("model")
@click.option("--tasks", "tasks", required=True, metavar="DATA", help="Labelled data whose classes episodes are drawn from.")
@_OUT
@click.option("--weights", metavar="FILE", help="State dict for a callable MODEL.")
@click.option("--classes", metavar="LIST", help="The classes episodes draw from (0-5, or 0,2,4; default: all).")
@click.option("--way", default=5, show_default=True, help="Classes per episode (the head becomes this wide).")
@click.option("--shot", default=5, show_default=True, help="Support examples per class and episode.")
@click.option("--query", default=10, show_default=True, help="Query examples per class and episode.")
@click.option(
    "--algo", type=click.Choice(["maml", "fomaml", "reptile"]), default="maml", show_default=True, help="Meta-learning algorithm."
)
@click.option("--budget", default="10m", show_default=True, help="Meta-training budget: time (10m, 90s) or meta-steps (500steps).")
@click.option("--inner-steps", default=5, show_default=True, help="SGD steps of the inner loop (and of adapt, by default).")
@click.option("--inner-lr", default=0.1, show_default=True, type=float, help="Learning rate of the inner loop.")
@click.option("--meta-lr", default=1e-3, show_default=True, type=float, help="Adam learning rate of the meta-update.")
@click.option("--meta-batch", default=4, show_default=True, help="Episodes per meta-update.")
@click.option("--seed", default=0, show_default=True, help="Seed of the episodes.")
@_TOKENIZER
@_SEQ_LEN
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def meta_init_command(
    model: str,
    tasks: str,
    out_dir: Path,
    weights: str | None,
    classes: str | None,
    tokenizer: str | None,
    seq_len: int | None,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Meta-train MODEL (a callable, .pt2, .onnx, or a compressed model.edgetune) so that it
    adapts to a new N-way task in a few steps from K examples per class: writes
    OUT/meta.edgetune (the model with an N-way head, ready for edgetune adapt) and
    OUT/report.json. A compressed model trains through its int8 quantizer."""
    from edgetune.artifacts import json_bytes, publish_folder
    from edgetune.data import load_dataset
    from edgetune.data.text import TextSpec
    from edgetune.finetune import parse_budget
    from edgetune.ir.serialize import graph_to_bytes
    from edgetune.meta.episodes import parse_classes
    from edgetune.meta.learn import MetaConfig, meta_train
    from edgetune.pipeline.adapt import fit_to, load_graph_for

    budget = parse_budget(options.pop("budget"))
    config = MetaConfig(budget, classes=parse_classes(classes), **options)
    progress = StderrProgress(enabled=not quiet)
    data = load_dataset(tasks, "train", progress=progress, text=TextSpec(tokenizer, seq_len or TextSpec().seq_len))
    graph = load_graph_for(model, weights, data)
    data = fit_to(graph, data)
    report = {"model": model, "tasks": data.source, "meta_init": meta_train(graph, data, config, progress)}
    publish_folder(out_dir, {"meta.edgetune": graph_to_bytes(graph), "report.json": json_bytes(report)})
    emit(report, as_json, _meta_text)


def _meta_text(report: dict[str, Any]) -> str:
    meta = report["meta_init"]
    c, v = meta["config"], meta["validation"]
    return "\n".join(
        [
            f"meta-init    {c['algo']}, {c['way']}-way {c['shot']}-shot on classes {meta['classes']} of {report['tasks']}"
            + (" (int8, through the model's quantizer)" if meta["int8"] else ""),
            f"trained      {meta['steps']} meta-steps in {meta['seconds']:.1f}s ({c['budget']}, {meta['outcome']})",
            f"validation   {v['metric']}: {100 * v['before']:.1f}% before, {100 * v['best']:.1f}% best (step {v['best_step']})",
            f"head         {meta['head']['layer']}: {meta['head']['classes_before']} -> {meta['head']['classes']} outputs, rows equal",
            "wrote        meta.edgetune, report.json",
        ]
    )


@click.command("adapt")
@click.argument("model")
@click.option("--support", required=True, metavar="DATA", help="Labelled examples of the new classes.")
@_OUT
@click.option("--classes", metavar="LIST", help="Keep only these classes of --support and --eval (0-5, or 0,2,4).")
@click.option("--shot", type=int, help="Examples per class drawn from --support (default: all of them).")
@click.option("--steps", type=int, help="SGD steps (default: the meta-initialization's inner steps, else 10).")
@click.option("--lr", type=float, help="Learning rate (default: the meta-initialization's inner one, else 0.1).")
@click.option("--time", "seconds", metavar="SECONDS", type=float, help="Wall-clock limit on the steps.")
@click.option("--memory", metavar="SIZE", help="Training-state budget (256KB): refused before any step when the plan is above it.")
@click.option("--strategy", type=click.Choice(["full", "head", "bias"]), default="full", show_default=True, help="What adapts.")
@click.option("--eval", "eval_data", metavar="DATA", help="Data to evaluate both artifacts on (the same classes).")
@click.option("--calib", metavar="DATA", help="Calibration data, for a float MODEL (quantized after adapting).")
@click.option("--target", default="host", show_default=True, help="Hardware target profile.")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Artifacts to write: onnx, tflite or both.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --shot draw.")
@_TOKENIZER
@_SEQ_LEN
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@common_options
def adapt_command(model: str, out_dir: Path, quiet: bool, as_json: bool, **options: Any) -> None:
    """Adapt MODEL (a compressed or meta-initialized model.edgetune) to the classes of
    --support within a step, time and memory budget, and write OUT/model.onnx, OUT/model.tflite
    (int8), OUT/model.edgetune and OUT/report.json. Output i of the adapted model is the i-th
    smallest class label of the support set."""
    from edgetune.pipeline.adapt import run_adapt

    report = run_adapt(model, out_dir, options, StderrProgress(enabled=not quiet))
    emit(report, as_json, _adapt_text)


def _adapt_text(report: dict[str, Any]) -> str:
    a = report["adapt"]
    lines = [
        f"adapted      {a['strategy']}, {a['steps']} SGD step(s) at lr {a['lr']:g} in {a['seconds']:.2f}s"
        + (" (meta-initialized)" if a["meta_initialized"] else ""),
        f"classes      {a['classes']} ({min(a['examples_per_class'].values())}-{max(a['examples_per_class'].values())} examples each)",
        f"support      accuracy {100 * a['support_accuracy']['before']:.1f}% -> {100 * a['support_accuracy']['after']:.1f}%",
        f"memory       training state {a['memory']['measured_bytes'] / 1e3:.1f} KB (predicted {a['memory']['predicted_bytes'] / 1e3:.1f} KB"
        + (f", budget {a['memory']['budget_bytes'] / 1e3:g} KB)" if a["memory"]["budget_bytes"] else ")"),
    ]
    ev = report.get("evaluation")
    if ev:
        lines.append(
            f"evaluated    {ev['samples']} samples of {ev['data']}: ONNX int8 {100 * ev['onnx_accuracy']:.1f}%"
            + (
                f", TFLite int8 {100 * ev['tflite_accuracy']:.1f}% (agreement {100 * ev['agreement']:.1f}%)"
                if "tflite_accuracy" in ev
                else ""
            )
        )
    lines.append("wrote        " + ", ".join(report["written"]))
    return "\n".join(lines)
