"""``edgetune compress``: quantize a model to int8 with calibration data and export it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgetune.cli.finetune_options import finetune_options
from edgetune.cli.output import FiniteFloat, common_options, emit, fmt, pct, table
from edgetune.progress import StderrProgress


@click.command(
    "compress",
    epilog="Every other setting is a recipe key: `edgetune recipe keys` lists them with their meaning; give them in a "
    "--recipe file or with --set. Their options work too: --mode dynamic-int8|float16, --keep-float, --c-array, --method, "
    "--ptq-budget, --qat, --augment, ... (docs/compress.md). --until max_latency_p50_ms=5 prunes one measured cut at a time "
    "until the model meets that budget (docs/search.md). --profile prints where the time went, start-up and imports included.",
)
@click.argument("model", required=False)
@click.option(
    "--recipe",
    "recipe_file",
    metavar="FILE",
    help="A recipe (TOML) with the run's settings, such as OUT/recipe.toml of an earlier run; options given here override it.",
)
@click.option(
    "--set", "sets", metavar="KEY=VALUE", multiple=True, help="Set one recipe key, e.g. quantize.ptq_budget=30 (edgetune recipe keys)."
)
@click.option("--calib", "calib", metavar="DATA", help="Calibration data: bundled set (digits), .npz, image folder or module:callable.")
@click.option("--eval", "eval_data", metavar="DATA", help="Evaluation data (labels give accuracy); default: held-out calibration samples.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--target", default="host", show_default=True, help="Hardware target profile (edgetune targets list).")
@click.option(
    "--weights", metavar="FILE", help="State dict for a callable model: .safetensors, .pt or .pth (loaded without unpickling code)."
)
@click.option("--input-shape", metavar="NxCxHxW", help="Model input shape, batch first, when the data cannot tell it.")
@click.option("--preprocess", metavar="NAME|FILE", help="Preprocessing of an image folder: imagenet, or a .toml (calibration/<name>.toml).")
@click.option("--tokenizer", metavar="FILE", help="tokenizer.json that turns .txt and .jsonl data into token ids.")
@click.option("--seq-len", type=int, metavar="N", help="Token length .txt and .jsonl passages are padded or truncated to (default 128).")
@click.option(
    "--method",
    type=click.Choice(["mse", "percentile", "minmax", "output"]),
    default="mse",
    show_default=True,
    help="Activation range method; output: per tensor, the method's range that moves the model's output least.",
)
@click.option("--percentile", type=FiniteFloat(), default=99.99, show_default=True, help="Percentile for --method percentile.")
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales instead of per-channel.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True, help="Calibration samples to use.")
@click.option(
    "--ptq",
    default="bias-correct",
    show_default=True,
    metavar="TECHNIQUES|best|none",
    help="Post-training techniques, comma-separated: equalize, adaround, bias-correct; best keeps each that helps on held-out samples.",
)
@click.option(
    "--weight-bits",
    type=click.Choice(["8", "4"]),
    default="8",
    show_default=True,
    help="4: 4-bit weight values (per channel by default), stored as int8 in model.onnx and model.tflite and packed in model.int4.onnx.",
)
@click.option(
    "--layer-bits",
    "layer_bits",
    metavar="NAME=BITS",
    multiple=True,
    help="Weight bits (8 or 4) of one layer, or of every layer in a module, over --weight-bits (repeatable): mixed precision.",
)
@click.option(
    "--accuracy-target",
    metavar="30dB|99%",
    help="Switch the fewest, most sensitive layers to --fallback until the int8 model reaches this output SQNR or top-1 agreement with fp32.",
)
@click.option(
    "--fallback",
    type=click.Choice(["float", "int16"]),
    help="What --accuracy-target switches layers to: float (default), or int16 activations with int8 weights (16x8; integer-only targets).",
)
@click.option(
    "--stream",
    type=click.Choice(["split", "smooth", "float", "off"]),
    help="A model with LayerNorm (a transformer): its residual stream, softmax and attention products in float, with outlier"
    " channels split where int8 layers read them (split, default), with SmoothQuant's migration of channel ranges into the"
    " weights before the split (smooth), in float without the split (float), or every tensor in int8 (off).",
)
@click.option(
    "--mode",
    type=click.Choice(["int8", "dynamic-int8", "float16"]),
    help="int8 (default): static, calibrated, full-integer. dynamic-int8: int8 weights, each layer's input quantized per inference"
    " (ONNX quantize_dynamic style, TFLite hybrid kernels). float16: float16 weights, float compute. The last two calibrate nothing.",
)
@click.option(
    "--keep-float",
    metavar="NAME[,NAME]",
    help="Weighted layers to keep in float in both artifacts: a layer (block.conv1) or a module (all its layers).",
)
@click.option("--sensitivity", is_flag=True, help="Measure each layer's int8 sensitivity alone; report it and plot OUT/sensitivity.png.")
@click.option(
    "--ptq-budget",
    type=FiniteFloat(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds for AdaRound, or for all of --ptq best (its trials, then AdaRound): planned by a cost model, held to the clock.",
)
@click.option(
    "--prune",
    "prune",
    metavar="channel:RATIO[:l1|l2|taylor|obd]|magnitude:RATIO|layers:N",
    help="Remove that share of channels (channel:0.5; a transformer's neurons and heads too), zero that share of weights"
    " (magnitude:0.8), or drop N whole transformer layers, those the output misses least (layers:2; join with +:"
    " layers:2+channel:0.5).",
)
@click.option(
    "--prune-allocation",
    type=click.Choice(["uniform", "global"]),
    default="uniform",
    show_default=True,
    help="The same share per group or layer, or one threshold across them.",
)
@click.option(
    "--prune-heads",
    type=float,
    metavar="RATIO",
    help="A transformer's share of attention heads to remove (default: the --prune channel ratio, which its feed-forward neurons take).",
)
@click.option(
    "--prune-protect", metavar="NAME[,NAME]", default="", help="Layers (block.conv1) or modules to keep whole; 'first' is the first conv."
)
@click.option(
    "--prune-layer",
    "prune_layers",
    metavar="NAME=RATIO",
    multiple=True,
    help="Another ratio for one layer's group, or for every group in a module (repeatable).",
)
@click.option(
    "--prune-steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Reach the pruning ratio in this many steps, re-ranking after each.",
)
@click.option("--prune-skip-unsupported", is_flag=True, help="Keep layers whose channels pruning cannot follow whole, instead of failing.")
@click.option(
    "--prune-bn/--no-prune-bn",
    "prune_bn",
    default=True,
    show_default=True,
    help="After pruning, give layers with folded BatchNorm their channel statistics back on calibration data.",
)
@finetune_options(budget_required=False)
@click.option("--formats", default="onnx,tflite", show_default=True, help="Artifacts to write: onnx, tflite or both.")
@click.option(
    "--tflite-io", type=click.Choice(["float", "int8"]), help="TFLite model input/output type (default: int8 for MCU targets, else float)."
)
@click.option("--float-tflite", is_flag=True, help="Also write model.fp32.tflite.")
@click.option("--c-array", is_flag=True, help="Also write the TFLite model as a C array for TFLite Micro (model_data.cc and .h).")
@click.option(
    "--until",
    "until",
    metavar="NAME=VALUE",
    multiple=True,
    help="Prune step by step until the model meets this budget (gate names: max_latency_p50_ms=5, max_artifact_kb=300).",
)
@click.option(
    "--until-step", type=FiniteFloat(), default=0.1, show_default=True, help="Share of a group's channels one --until cut removes."
)
@click.option(
    "--until-screen",
    type=click.Choice(["quick", "recover"]),
    default="quick",
    show_default=True,
    help="--until candidates judged without the fine-tune (quick), or each after it (recover: slower, closer to NetAdapt).",
)
@click.option("--device", metavar="URL", help="With --until: measure on this board (ssh://user@host or adb:SERIAL), not this host.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--profile", is_flag=True, help="Print on stderr where the time went: start-up, imports, each stage and its steps.")
@common_options
def command(out_dir: Path, resume: bool, quiet: bool, profile: bool, as_json: bool, **options: Any) -> None:
    """Quantize MODEL to int8 and write OUT/model.onnx, OUT/model.fp32.onnx, OUT/model.tflite, OUT/model.edgetune,
    OUT/report.json and OUT/recipe.toml.

    MODEL is file.py:callable or package.module:callable returning a torch.nn.Module,
    a .pt2 file from torch.export.save, or an .onnx file. Every setting is a recipe key: a
    --recipe file gives them, the options given here override it, and --set overrides both.
    OUT/recipe.toml replays the run: edgetune compress --recipe OUT/recipe.toml -o OUT2.
    """
    from edgetune.recipe import run

    until, step, device, screen = options.pop("until"), options.pop("until_step"), options.pop("device"), options.pop("until_screen")
    recipe = recipe_from_options(click.get_current_context(), options)
    if until:
        _until(recipe, until, (step, screen), device, out_dir, quiet, as_json)
        return
    if device:
        from edgetune.errors import InputError

        raise InputError("--device measures the steps of --until", "add --until NAME=VALUE, or use edgetune bench --device")
    result = run(recipe, out_dir, resume=resume, progress=StderrProgress(enabled=not quiet))
    if result.paths:  # under torchrun, the other processes stay silent
        emit(result.report, as_json, human)
        if profile:
            click.echo(profile_table(result.report["profile"]), err=True)


def profile_table(profile: dict[str, Any]) -> str:
    """The report's profile as an indented table, with the process's whole wall time: what
    the stages do not cover (the report, publishing the folder) is the remainder."""
    from edgetune import timing

    process = profile["process"]
    rows: list[tuple[str, str, str]] = []
    if process["startup"] is not None:
        again = " (twice: exec for malloc huge pages)" if process.get("huge_pages") else ""
        rows.append((f"start-up (interpreter, before edgetune){again}", f"{process['startup']:.2f}", ""))
    rows.append(("imports and options", f"{process['imports']:.2f}", ""))

    def add(span: dict[str, Any], depth: int) -> None:
        calls = f"x{span['calls']}" if span.get("calls", 1) > 1 else ""
        rows.append(("  " * depth + span["name"], f"{span['seconds']:.2f}", calls))
        for child in span.get("steps", []):
            add(child, depth + 1)

    for span in profile["stages"]:
        add(span, 0)
    inside = (process["startup"] or 0.0) + process["imports"] + sum(span["seconds"] for span in profile["stages"])
    wall = (process["startup"] or 0.0) + time.perf_counter() - timing.IMPORTED
    rows += [("report and publish", f"{max(wall - inside, 0.0):.2f}", ""), ("wall", f"{wall:.2f}", "")]
    return table(rows, ["step", "seconds", "calls"])


def _until(
    recipe: Any, until: tuple[str, ...], how: tuple[float, str], device: str | None, out_dir: Path, quiet: bool, as_json: bool
) -> None:
    """``--until``: the least-pruned model that meets the budgets (edgetune.search.netadapt)."""
    import sys

    from edgetune.cli.output import pairs
    from edgetune.cli.search import EXIT_NOT_MET
    from edgetune.search.netadapt import tighten, until_config

    config = until_config(recipe, pairs(until, "--until"), "--until", how[0], device, how[1])

    def progress(done: int, total: int, label: str) -> None:
        if not quiet:
            print(f"until: {label}", file=sys.stderr, flush=True)

    summary = tighten(recipe.with_absolute_paths(), config, out_dir, progress)
    document = {**summary.pop("report"), "until": summary}
    emit(document, as_json, _until_human)
    if not summary["met"]:
        raise click.exceptions.Exit(EXIT_NOT_MET)


def _until_human(document: dict[str, Any]) -> str:
    until = document["until"]
    rows = []
    for step in until["steps"]:
        chosen = step["chosen"] or {}
        faster = f"{sum(not c['note'] for c in step['candidates'])}/{len(step['candidates'])}" if step["step"] else "-"
        figure = chosen.get("figures", {}).get(until["shown"])
        rows.append(
            [
                step["step"],
                chosen.get("group") or ("start" if step["step"] == 0 else "none kept"),
                fmt(chosen.get("quality"), 4),
                fmt(figure, 4),
                faster,
            ]
        )
    failed = [f"{c['name']} {fmt(c['value'], 4)} (limit {c['limit']})" for c in until["checks"] if not c["passed"]]
    verdict = "meets every budget" if until["met"] else f"misses {', '.join(failed)}"
    lines = [
        human(document),
        "",
        f"until ({until['compressions']} compressions, stopped: {until['stopped']}):",
        table(rows, ["step", "cut", "quality", f"{until['shown']}", "lower cuts"]),
        f"result: {verdict}",
    ]
    return "\n".join(lines)


# The options --help shows; the others still work, but a recipe key is the way to set them.
EVERYDAY = {"recipe_file", "sets", "calib", "eval_data", "weights", "out_dir", "target", "ptq", "prune", "finetune_budget"}
EVERYDAY |= {"train_data", "formats", "as_json", "debug"}
for _param in command.params:
    if isinstance(_param, click.Option) and _param.name not in EVERYDAY:
        _param.hidden = True


def recipe_from_options(ctx: click.Context, options: dict[str, Any]) -> Any:
    """The run's recipe: the --recipe file, then the options given on the command line (not
    their defaults, which the recipe has), then --set."""
    from click.core import ParameterSource

    from edgetune.recipe import Recipe, load, parse_sets
    from edgetune.recipe.options import from_options
    from edgetune.recipe.recipe import COMMAND_LINE

    recipe = load(options["recipe_file"]) if options["recipe_file"] else Recipe()
    given = {name: value for name, value in options.items() if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    recipe = recipe.updated(from_options(given), COMMAND_LINE)
    return recipe.updated(parse_sets(options["sets"]), "--set")


def finetune_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    f = report["finetune"]
    regression = f["task"] in ("regression", "embedding") or f["validation"]["metric"].startswith("Spearman")
    show = (lambda v: f"{v:.4g}") if regression else pct
    mode = "QAT" if f["config"]["qat"] else "float"
    rows = [
        (
            "fine-tune",
            f"{mode}, {f['steps']} steps in {f['seconds']:.1f}s ({f['config']['budget']}, batch {f['batch_size']}, {f['config']['strategy']}):"
            f" validation {f['validation']['metric']} {show(f['metric_before'])} -> {show(f['metric_best'])} (best at step {f['best_step']}, {f['outcome']})",
        ),
        ("fine-tune memory", _memory_text(f["memory"])),
    ]
    recovery = report.get("recovery")
    if recovery and recovery.get("accuracy_before_compression") is not None:
        rows.append(
            (
                "accuracy",
                f"before compression {pct(recovery['accuracy_before_compression'])}, after compression {pct(recovery['accuracy_after_compression'])},"
                f" after recovery {pct(recovery['accuracy_after_recovery'])}",
            )
        )
    return rows


def _memory_text(memory: dict[str, Any]) -> str:
    text = f"peak RSS +{memory['peak_rss_delta_bytes'] / 2**20:.0f} MiB"
    plan = memory["plan"]
    if memory["budget_bytes"]:
        text += f" (budget {memory['budget_bytes'] / 2**20:.0f} MiB; planned {memory['predicted_bytes'] / 2**20:.0f} MiB"
        text += f", {plan['frozen_input_layers']} input-side layers frozen)" if plan else ")"
        text += " OVER its budget" if memory["peak_rss_delta_bytes"] > memory["budget_bytes"] else ""
    state = memory.get("training_state")
    if state:
        budget = f"budget {state['budget_bytes'] / 1e3:.1f} KB, " if state["budget_bytes"] else ""
        text += f"; training state {state['measured_bytes'] / 1e3:.1f} KB ({budget}predicted {state['predicted_bytes'] / 1e3:.1f} KB)"
        text += " OVER its budget" if state["budget_bytes"] and state["measured_bytes"] > state["budget_bytes"] else ""
    return text


def _method_text(report: dict[str, Any]) -> str:
    chosen = report["quantization"]["ptq"].get("calibration_method")
    return f"{chosen['chosen']} (chosen by --ptq best)" if chosen else str(report["quantization"]["config"]["method"])


def _ptq_text(ptq: dict[str, Any]) -> str:
    if ptq.get("applied"):
        text = ", ".join(ptq["applied"]) + (f" in {ptq['seconds']:.1f}s" if "seconds" in ptq else "")
    else:
        text = "none" if not ptq.get("requested") else f"none of {', '.join(ptq['requested'])} helped"
    scores = ptq.get("held_out_sqnr_db")
    if scores:
        text += " (held-out SQNR " + ", ".join(f"{k} {v:.1f} dB" for k, v in scores.items()) + ")"
    if ptq.get("keep_float"):
        text += f"; kept in float as asked: {', '.join(ptq['keep_float']['layers'])}"
    fallback = ptq.get("fallback")
    if fallback:
        precision = fallback.get("precision", "float")
        layers = fallback[f"{precision}_layers"]
        reached = "reached" if fallback["reached"] else "NOT reached"
        bound = fallback.get("every_layer_switched")
        if not fallback["reached"] and bound:
            measured = [f"{bound['sqnr_db']:.1f} dB"] + ([f"{100 * bound['agreement']:.1f}% agreement"] if "agreement" in bound else [])
            reached += f" (every layer in {precision}: {', '.join(measured)})"
        text += f"; target {fallback['target']} {reached} with {len(layers)} layer(s) in {precision}" + (
            f": {', '.join(layers)}" if layers else ""
        )
    return text


def human(report: dict[str, Any]) -> str:
    """The report as a table: a compress run's, or a recovery's (of a compressed model.edgetune)."""
    if report["command"] == "finetune":
        return _recovery_human(report)
    ev = report["evaluation"]
    label = MODE_LABELS[report["quantization"]["config"].get("mode", "int8")]
    rows = [*_model_rows(report, label), *_evaluation_rows(ev, label), *_pruning_rows(report)]
    if "finetune" in report:
        rows += finetune_rows(report)
    timings = report["timings_s"]
    rows.append(("time", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())))
    worst = sorted((layer for layer in report["layers"] if layer["sqnr_db"] is not None), key=lambda layer: layer["sqnr_db"])[:3]
    if worst:
        rows.append(("lowest SQNR", ", ".join(f"{layer.get('layer', layer['tensor'])} {layer['sqnr_db']:.1f} dB" for layer in worst)))
    for entry in report["quantization"].get("float_ops", []):
        if entry["why"].startswith("the float stream"):
            continue  # the "float stream" row says it once
        rows.append((f"float {entry['op']}", f"{len(entry['layers'])} in {entry['files']} int8 files: {entry['why']}"))
    if "sensitivity" in report:
        alone = sorted(report["sensitivity"]["layers"], key=lambda layer: layer["sqnr_db"])[:3]
        rows.append(("most sensitive", ", ".join(f"{layer['layer']} ({layer['op']}) {layer['sqnr_db']:.1f} dB alone" for layer in alone)))
    shown = ("held-out", "calibration samples", "embedding")
    note = f"\nnote: {ev['note']}" if any(word in ev["note"] for word in shown) else ""
    return table(rows) + note + "\nwrote " + ", ".join(report["artifacts"])


def _recovery_human(report: dict[str, Any]) -> str:
    ev = report["evaluation"]
    rows = [("model", report["model"]["source"]), ("evaluated on", f"{ev['samples']} samples of {ev['data']}")]
    if "int8_accuracy" in ev:
        rows.append(
            ("accuracy", f"int8 {pct(ev['int8_accuracy'])}" + (f", TFLite {pct(ev['tflite']['accuracy'])}" if "tflite" in ev else ""))
        )
    if "similarity" in ev:
        rows.append(("similarity", _similarity_text(ev["similarity"], "int8")))
    rows += finetune_rows(report)
    return table(rows) + "\nwrote " + ", ".join(report["artifacts"])


MODE_LABELS = {"int8": "int8", "dynamic-int8": "dynamic int8", "float16": "float16"}


def _model_rows(report: dict[str, Any], label: str) -> list[tuple[str, str]]:
    model, sizes, calibration = report["model"], report["sizes"], report["quantization"]["calibration"]
    weights = [("weights", model["note"])] if "note" in model else []
    return [
        ("model", f"{model['source']}  ({model['parameters']:,} parameters, {model['macs'] / 1e6:.1f} M MACs)"),
        *weights,
        *_text_rows(report.get("data", {})),
        ("target", f"{report['target']['name']}  (ONNX activations {report['target']['onnx_activations']})"),
        (
            "calibration",
            f"{calibration['samples']} samples of {calibration['source']}, {_method_text(report)}"
            if label == "int8"
            else f"none: {report['quantization']['scheme']}",
        ),
        (
            "size",
            f"ONNX fp32 {sizes['model.fp32.onnx_bytes'] / 1024:.1f} KiB -> {label} {sizes['model.onnx_bytes'] / 1024:.1f} KiB ({sizes['int8_to_fp32']:.2f}x)"
            + (f", TFLite {label} {sizes['model.tflite_bytes'] / 1024:.1f} KiB" if "model.tflite_bytes" in sizes else "")
            + (f", ONNX int4 weights {sizes['model.int4.onnx_bytes'] / 1024:.1f} KiB" if "model.int4.onnx_bytes" in sizes else ""),
        ),
        *([("note", sizes["note"])] if "note" in sizes else []),
        ("post-training", _ptq_text(report["quantization"]["ptq"])),
        *_stream_rows(report["quantization"].get("stream")),
    ]


def _stream_rows(stream: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A transformer's float stream and outlier split (quantize/stream.py), when there is one."""
    if stream is None:
        return []
    return [
        (
            "float stream",
            f"{stream['float_ops']} ops in float (LayerNorm, GELU, softmax, residual adds and what reads only them); "
            + (
                ("SmoothQuant migration at {} layer input(s), ".format(stream["smoothed_points"]) if stream.get("smoothed_points") else "")
                + f"{stream['input_channels_added']} outlier channel copies at {stream['input_points']} layer input(s),"
                f" {stream['output_rows_scaled']} outlier row(s) scaled at {stream['output_points']} layer output(s)"
                if stream["split"]
                else "outlier channels not split (--stream float, or --ptq best found the split no better)"
            ),
        )
    ]


def _text_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """How each text file became token ids: what was truncated, skipped and repaired."""
    rows = []
    for role, described in data.items():
        text = described.get("text")
        if text:
            rows.append(
                (
                    f"text ({role})",
                    f"{text['passages']} passages to {text['seq_len']} tokens: {text['truncated']} truncated"
                    f" ({100 * text['truncated_share']:.1f}%), {text['empty_lines']} empty line(s) skipped,"
                    f" {text['invalid_utf8_lines']} line(s) with invalid UTF-8 repaired",
                )
            )
    return rows


def _cosine_text(onnx: dict[str, Any], tflite: dict[str, Any] | None, label: str) -> str:
    """The outputs read as embeddings: mean and 1st-percentile cosine, nearest-neighbour agreement."""

    def one(name: str, block: dict[str, Any]) -> str:
        neighbours = block["neighbour_agreement"]
        shown = f", nearest-neighbour agreement {pct(neighbours)}" if neighbours is not None else ""
        return f"{name} mean {block['cosine_mean']:.4f} (1st percentile {block['cosine_p1']:.4f}){shown}"

    return "; ".join([one(f"ONNX {label}", onnx), *([one(f"TFLite {label}", tflite)] if tflite else [])])


def _similarity_text(block: dict[str, Any], label: str) -> str:
    """Similarity pairs: each model's Spearman (or recall at 1) on the --eval pairs."""
    metric = block["metric"]
    names = {"original": "the original", "fp32": "fp32", "onnx_int8": f"ONNX {label}", "tflite": f"TFLite {label}"}
    shown = ", ".join(f"{names[key]} {block[key][metric]:.4f}" for key in names if key in block)
    return f"{'Spearman' if metric == 'spearman' else 'recall@1'} on {block['pairs']} pairs: {shown}"


def _evaluation_rows(ev: dict[str, Any], label: str = "int8") -> list[tuple[str, str]]:
    rows = [("evaluated on", f"{ev['samples']} samples of {ev['data']}")]
    if "fp32_accuracy" in ev:
        rows.append(
            ("accuracy", f"fp32 {pct(ev['fp32_accuracy'])}, {label} {pct(ev['int8_accuracy'])} (drop {ev['accuracy_drop_pp']:.2f} pp)")
        )
    agreement = ev["int8_vs_fp32"]
    rows.append(
        (f"ONNX {label} vs fp32", f"top-1 agreement {pct(agreement['top1_agreement'])}, SQNR {fmt(agreement['sqnr_db'], 1, ' dB')}")
    )
    if "tflite" in ev:
        tfl = ev["tflite"]
        accuracy = f"accuracy {pct(tfl['accuracy'])}, " if "accuracy" in tfl else ""
        apart = (
            f"max {tfl['max_lsb_vs_onnx_int8']:g} LSB apart"
            if tfl.get("max_lsb_vs_onnx_int8") is not None
            else f"max |difference| {tfl['max_abs_diff_vs_onnx']:.3g}"
        )
        rows.append(
            (
                f"TFLite {label}",
                f"{accuracy}agreement with fp32 {pct(tfl['top1_agreement_with_fp32'])}, with ONNX {label} {pct(tfl['top1_agreement_with_onnx_int8'])}"
                f" ({apart}), {tfl['runtime']}",
            )
        )
    rows.append(("cosine to fp32", _cosine_text(agreement, ev.get("tflite", {}).get("vs_fp32"), label)))
    if "vs_original" in ev:
        original = ev["vs_original"]
        shown = original.get("tflite") or original["onnx_int8"]
        rows.append(
            (
                "vs the original",
                f"{'TFLite' if 'tflite' in original else 'ONNX'} {label} against the model as given (before pruning and fine-tune):"
                f" top-1 agreement {pct(shown['top1_agreement'])}, SQNR {fmt(shown['sqnr_db'], 1, ' dB')}"
                + (f", mean cosine {shown['cosine_mean']:.4f}" if "cosine_mean" in shown else ""),
            )
        )
    if "similarity" in ev:
        rows.append(("similarity", _similarity_text(ev["similarity"], label)))
    if "onnx_int4" in ev:
        int4 = ev["onnx_int4"]
        rows.append(
            (
                "ONNX int4 weights",
                f"agreement with fp32 {pct(int4['top1_agreement_with_fp32'])}, with ONNX int8 {pct(int4['top1_agreement_with_onnx_int8'])}"
                f" (max {int4['max_lsb_vs_onnx_int8']:g} LSB apart); for 4-bit runtimes: ONNX Runtime's CPU provider runs these layers in float, slower than int8",
            )
        )
    return rows


def _pruning_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if "pruning" not in report:
        return []
    p, sizes = report["pruning"], report["sizes"]
    if p["config"]["kind"] == "magnitude":
        gzip = sizes.get("model.tflite_gzip_bytes", sizes.get("model.onnx_gzip_bytes"))
        sparsity = f"magnitude {p['config']['ratio']:g} ({p['config']['allocation']}): {100 * p['sparsity']:.1f}% of weights zero"
        return [("pruning", f"{sparsity}; gzip {gzip / 1024:.1f} KiB"), ("note", p["note"]), *_batchnorm_rows(p)]
    rows = []
    skipped = [g for g in p["groups"] if g.get("unsupported")]
    if skipped:
        rows.append(("kept whole", "; ".join(f"{', '.join(g['layers'])} (through {', '.join(g['unsupported'])})" for g in skipped)))
    rounded = [g for g in p["groups"] if "why" in g]
    if rounded:
        rows.append(("not pruned", f"{', '.join(g['layers'][0] for g in rounded)}: {rounded[0]['why']}"))
    pruned = sum(1 for g in p["groups"] if g["after"] < g["before"])
    overrides = p["config"].get("overrides") or []
    share = f"{p['config']['ratio']:g}" + (f" (and {len(overrides)} layers' own)" if overrides else "")
    heads = [g for g in p["groups"] if g.get("kind") == "heads"]
    neurons = [g for g in p["groups"] if g.get("kind") == "neurons"]
    if heads or neurons:
        rows.append(
            (
                "transformer",
                f"feed-forward neurons {sum(g['after'] for g in neurons)} of {sum(g['before'] for g in neurons)} kept,"
                f" attention heads {sum(g['after'] for g in heads)} of {sum(g['before'] for g in heads)}",
            )
        )
    totals = f"MACs {p['macs']['ratio']:.2f}x, parameters {p['parameters']['ratio']:.2f}x"
    layers = p.get("layers")
    if layers:
        dropped = ", ".join(str(index) for index in layers["dropped"])
        text = f"dropped {len(layers['dropped'])} of {layers['before']} encoder layers ({dropped}): {layers['criterion']}"
        rows.append(("layers", text + ("" if pruned else f"; {totals}")))
    if pruned or not layers:
        rows.append(("pruning", f"{p['config']['criterion']} {share} of channels in {pruned} of {len(p['groups'])} groups: {totals}"))
    return rows + _batchnorm_rows(p)


def _batchnorm_rows(pruning: dict[str, Any]) -> list[tuple[str, str]]:
    bn = pruning.get("batchnorm")
    if not bn or not bn["layers"]:
        return []
    return [
        (
            "BatchNorm",
            f"re-estimated in {bn['layers']} layers on {bn['samples']} samples"
            f" (before: median mean shift {bn['median_mean_shift']:g} std, std ratio {bn['median_std_ratio']:g})",
        )
    ]
