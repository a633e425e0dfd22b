"""Every key a recipe can set: its type, default and meaning. The one reference for
``edgetune recipe keys``, docs/recipes.md and validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("str", "int", "float", "bool", "list", "table")


@dataclass(frozen=True)
class Key:
    name: str  # dotted: section.key, or a top-level key
    kind: str  # one of KINDS; "list" holds strings, "table" maps names to numbers
    default: Any  # None: unset (TOML has no null: an unset key is left out of the file)
    help: str


KEYS: tuple[Key, ...] = (
    Key("target", "str", "host", "hardware target profile: a name from `edgetune targets list`, or a .toml file"),
    Key(
        "model.source",
        "str",
        None,
        "file.py:callable or module:callable returning an nn.Module, a .pt2 or an fp32 .onnx file; or a model.edgetune to recover",
    ),
    Key("model.weights", "str", None, "state dict for a callable model: .safetensors, .pt or .pth"),
    Key("model.input_shape", "str", None, "input shape, batch first (1x3x224x224), when neither the model nor the data tells it"),
    Key("data.calib", "str", None, "calibration data: a bundled set (digits), an .npz, an image folder or module:callable"),
    Key("data.eval", "str", None, "evaluation data (labels give accuracy); default: held-out calibration samples"),
    Key("data.train", "str", None, "training data for the fine-tune"),
    Key("data.preprocess", "str", None, "preprocessing of an image folder: a bundled name (imagenet) or a .toml file"),
    Key("data.tokenizer", "str", None, "tokenizer.json (or its folder) that turns .txt and .jsonl passages into token ids"),
    Key("data.seq_len", "int", 128, "the token length .txt and .jsonl passages are padded or truncated to"),
    Key(
        "data.pairs",
        "str",
        "auto",
        "a .jsonl text_pair: joined to its text in one sequence (a cross-encoder), or separate (each side embedded alone, "
        "similarity pairs whose label is a score); auto: separate when finetune.task is embedding",
    ),
    Key("quantize.method", "str", "mse", "activation range method: mse, percentile, minmax or output"),
    Key("quantize.percentile", "float", 99.99, "the percentile of the percentile method"),
    Key("quantize.per_tensor", "bool", False, "per-tensor weight scales instead of per-channel"),
    Key("quantize.samples", "int", 128, "calibration samples"),
    Key("quantize.ptq", "str", "bias-correct", "post-training techniques: equalize,adaround,bias-correct, best, or none"),
    Key("quantize.ptq_budget", "float", 60.0, "seconds for AdaRound, or for all of best (planned by a cost model, held to the clock)"),
    Key("quantize.weight_bits", "int", 8, "8, or 4 for 4-bit weight values"),
    Key(
        "quantize.layer_bits",
        "table",
        {},
        "weight bits of some layers or modules, over quantize.weight_bits (mixed precision): { block.conv1 = 4, head = 8 }",
    ),
    Key("quantize.accuracy_target", "str", None, "30dB or 99%: layers fall back until the int8 model reaches it"),
    Key("quantize.mode", "str", "int8", "int8 (static, calibrated), dynamic-int8 (int8 weights, activations per inference) or float16"),
    Key("quantize.fallback", "str", None, "what accuracy_target switches layers to: float or int16"),
    Key(
        "quantize.stream",
        "str",
        "split",
        "a model with LayerNorm: its residual stream in float with outlier channels split (split), with SmoothQuant's"
        " migration before the split (smooth), in float only (float),"
        " or every tensor int8 (off)",
    ),
    Key("quantize.keep_float", "list", [], 'weighted layers or modules kept in float in both artifacts, e.g. ["block.conv1", "head"]'),
    Key("quantize.sensitivity", "bool", False, "measure each layer's int8 sensitivity and plot sensitivity.png"),
    Key(
        "prune.method",
        "str",
        None,
        "channel:RATIO[:l1|l2|taylor|obd], magnitude:RATIO, layers:N (whole transformer layers), or layers:N+channel:RATIO",
    ),
    Key("prune.allocation", "str", "uniform", "uniform (the same share per group) or global (one threshold)"),
    Key("prune.heads", "float", None, "a transformer's share of attention heads to remove (default: the method's ratio)"),
    Key("prune.protect", "list", [], "layers or modules kept whole ('first' is the first conv)"),
    Key(
        "prune.layers", "table", {}, "another ratio for some layers' groups, or every group in a module: { block.conv1 = 0.25, head = 0.1 }"
    ),
    Key("prune.steps", "int", 1, "reach the ratio in this many re-ranked steps"),
    Key("prune.skip_unsupported", "bool", False, "keep layers whose channels pruning cannot follow whole, instead of failing"),
    Key("prune.reestimate_bn", "bool", True, "give folded BatchNorm layers their channel statistics back after pruning"),
    Key("finetune.budget", "str", None, "recovery budget: 90s, 5m, 500steps or 3epochs (unset: no fine-tune)"),
    Key("finetune.qat", "bool", False, "quantization-aware training after calibration"),
    Key(
        "finetune.strategy",
        "str",
        "full",
        "what trains: full, head, last:K or gradual, joined with + to bias, lora:R, sparse:MEMORY or lite",
    ),
    Key("finetune.memory", "str", None, "training-memory budget, e.g. 512MB"),
    Key(
        "finetune.augment",
        "str",
        None,
        "augmentations, e.g. shift:2,flip,noise:0.05,mixup:0.2, or module:callable; for text: delete:0.1,swap:0.1,synonyms:FILE,share:0.5",
    ),
    Key(
        "finetune.distill",
        "str",
        "predictions",
        "what recovery distils from the original model: predictions, intermediate (LayerNorm outputs too), or tinybert"
        " (and attention maps, or value relations where heads were pruned)",
    ),
    Key("finetune.task", "str", "auto", "auto, classification, regression or embedding (cosine to the original model)"),
    Key("finetune.batch_size", "int", 32, "batch size (per process)"),
    Key("finetune.lr", "float", None, "peak learning rate (default: 3e-3, or 5e-4 for a transformer 256 or more wide)"),
    Key(
        "finetune.lr_decay",
        "float",
        1.0,
        "discriminative learning rate: each layer (each block of a transformer) below the top one learns this factor slower",
    ),
    Key("finetune.optimizer", "str", "adamw", "adamw, adam or sgd"),
    Key("finetune.distill_weight", "float", 0.5, "share of the distillation loss when there are labels too"),
    Key("finetune.temperature", "float", 4.0, "distillation temperature"),
    Key("finetune.label_smoothing", "float", 0.0, "label smoothing of the cross-entropy"),
    Key("finetune.early_stop", "int", 0, "stop after this many validations without improvement (0: never)"),
    Key("finetune.seed", "int", 0, "seed of the fine-tune (order, split, augmentation)"),
    Key(
        "finetune.init",
        "str",
        None,
        "a meta.edgetune from `edgetune meta-init`: its weights start the run, and the fine-tune becomes its few-shot"
        " adaptation to data.train's classes (its inner steps and lr unless finetune.budget or finetune.lr are set)",
    ),
    Key("finetune.teacher", "str", None, "the uncompressed model to distil from, when model.source is a compressed model.edgetune"),
    Key("finetune.teacher_weights", "str", None, "state dict for a callable finetune.teacher"),
    Key("finetune.checkpoint_every", "float", 60.0, "seconds between checkpoints"),
    Key("export.formats", "list", ["onnx", "tflite"], "artifacts to write: onnx, tflite"),
    Key("export.tflite_io", "str", None, "TFLite input/output type: int8 or float (unset: int8 for MCU targets)"),
    Key("export.float_tflite", "bool", False, "also write model.fp32.tflite"),
    Key("export.c_array", "bool", False, "also write the TFLite model as a C array for TFLite Micro (model_data.cc and .h)"),
)

BY_NAME = {key.name: key for key in KEYS}
SECTIONS = tuple(dict.fromkeys(key.name.split(".")[0] for key in KEYS if "." in key.name))
