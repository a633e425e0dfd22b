"""The fine-tune options shared by ``compress --finetune`` and ``finetune``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from edgetune.cli.output import FiniteFloat

F = TypeVar("F", bound=Callable[..., Any])
TASK_ALIASES = {"classify": "classification", "embed": "embedding"}


_OPTIONS: list[Callable[[F], F]] = [
    click.option("--qat", is_flag=True, help="Quantization-aware training: train through the int8 quantizer and learn its scales (LSQ)."),
    click.option(
        "--finetune-strategy",
        "strategy",
        default="full",
        show_default=True,
        metavar="full|head|last:K|gradual[+bias|+lora:R|+sparse:MEM|+lite]",
        help="What trains: all layers, the head, the last K, or gradually unfrozen from the output; or, joined with +,"
        " the biases, rank-R LoRA updates (merged before export), a sparse update chosen to fit MEM of training state,"
        " or lite residual modules (TinyTL; they stay in the artifacts).",
    ),
    click.option("--finetune-memory", metavar="SIZE", help="Training-memory budget (512MB): sets batch size and frozen layers."),
    click.option(
        "--augment",
        metavar="LIST",
        help="Augmentations joined by commas (shift:2,flip,noise:0.05). Kinds: shift:PIXELS crop:PIXELS flip noise:STD"
        " cutout:SHARE time_shift:SHARE mixup:ALPHA, or module:callable. Text passages take word edits instead:"
        " mask:P delete:P swap:P insert:P synonyms:TABLE paraphrase:CALLABLE, and share:S (passages edited, 0.5).",
    ),
    click.option(
        "--distill",
        type=click.Choice(["predictions", "intermediate", "tinybert"]),
        default="predictions",
        show_default=True,
        help="What recovery distils from the original model: its outputs; its LayerNorm outputs (hidden states) too;"
        " or those and its attention maps, or the values' relations where heads were pruned (tinybert; transformers).",
    ),
    click.option(
        "--task",
        type=click.Choice(["auto", "classification", "regression", "embedding", "classify", "embed"]),
        default="auto",
        show_default=True,
        callback=lambda _ctx, _param, value: TASK_ALIASES.get(value, value),
        help="Loss: cross-entropy for classes, MSE for regression targets, cosine to the original model for embeddings"
        " (auto picks it for an L2-normalized or per-token output without labels); an embedding on .jsonl pairs"
        " (text, text_pair, an optional score as label) trains a bi-encoder: CoSENT on scores, in-batch negatives without.",
    ),
    click.option(
        "--pairs",
        type=click.Choice(["auto", "joined", "separate"]),
        default="auto",
        show_default=True,
        help="A .jsonl text_pair: joined to its text in one sequence (a cross-encoder) or encoded alone (a bi-encoder);"
        " auto: separate for --task embed.",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Fine-tune batch size (per process)."),
    click.option(
        "--distill-weight",
        type=FiniteFloat(0, 1),
        default=0.5,
        show_default=True,
        help="Share of the distillation loss when there are labels too.",
    ),
    click.option("--temperature", type=FiniteFloat(min=0, min_open=True), default=4.0, show_default=True, help="Distillation temperature."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fine-tune (order, split, augmentation)."),
    click.option(
        "--checkpoint-every",
        type=FiniteFloat(min=0, min_open=True),
        default=60.0,
        show_default=True,
        metavar="SECONDS",
        help="Save OUT/finetune.ckpt this often (and on Ctrl-C).",
    ),
    click.option("--resume", is_flag=True, help="Continue an interrupted fine-tune from OUT/finetune.ckpt."),
    click.option(
        "--early-stop",
        "patience",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Stop after this many validations without improvement (0: never).",
    ),
    click.option(
        "--label-smoothing",
        type=FiniteFloat(0, 1, max_open=True),
        default=0.0,
        show_default=True,
        help="Label smoothing of the cross-entropy.",
    ),
    click.option(
        "--finetune-lr",
        type=FiniteFloat(min=0, min_open=True),
        help="Peak learning rate (warm-up, then cosine). Default: 3e-3, or 5e-4 for a transformer 256 or more wide.",
    ),
    click.option(
        "--lr-decay",
        type=FiniteFloat(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        metavar="FACTOR",
        help="Discriminative learning rate (ULMFiT): each layer below the top one, or each transformer block, learns"
        " FACTOR times slower than the one above (0.8: the block under the head at 0.8x, the one under it at 0.64x).",
    ),
    click.option(
        "--finetune-optimizer",
        type=click.Choice(["adamw", "adam", "sgd"]),
        default="adamw",
        show_default=True,
        help="Optimizer.",
    ),
    click.option("--train", "train_data", metavar="DATA", help="Training data (a validation split is carved off)."),
]


def finetune_options(budget_required: bool) -> Callable[[F], F]:
    """Decorate a command with the fine-tune options; the budget is optional on ``compress``."""

    def add(fn: F) -> F:
        for option in _OPTIONS:
            fn = option(fn)
        return click.option(
            "--finetune",
            "finetune_budget",
            metavar="BUDGET",
            required=budget_required,
            help="Fine-tune budget: 90s, 5m, 500steps or 3epochs.",
        )(fn)

    return add
