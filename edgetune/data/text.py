"""Text data: passages read from ``.txt`` (one a line) or ``.jsonl`` (``text``, optional
``label`` and ``text_pair``) and tokenized into token ids of one fixed length with a
``tokenizer.json`` (Hugging Face's ``tokenizers`` package, ``pip install 'edgetune[text]'``).

A ``text_pair`` is joined to its ``text`` in one sequence (``[CLS] a [SEP] b [SEP]``, what a
cross-encoder reads), or, with ``pairs="separate"``, encoded on its own (what a bi-encoder
embeds: similarity pairs, whose ``label`` is then a score, any number, e.g. 0-5 or 0/1).

Longer passages are truncated and shorter ones padded; neither is an error. Empty lines are
skipped, and bytes that are not UTF-8 are replaced; the counts of all three go with the data
(``Dataset.preprocess``), so that the report and the artifacts' metadata carry them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.data.dataset import Dataset
from edgetune.errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl")
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")
# What a BERT-style forward takes; the model's own arguments are chosen from them (pipeline/load.py).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


PAIRS = ("joined", "separate")


@dataclass(frozen=True)
class TextSpec:
    """How passages become token ids: the tokenizer file, the fixed sequence length, and
    whether a ``text_pair`` joins its ``text`` or is encoded on its own (PAIRS)."""

    tokenizer: str | None = None
    seq_len: int = 128
    pairs: str = "joined"

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise InputError(f"--seq-len {self.seq_len} is not positive", "give the sequence length the model is written for, e.g. 128")
        if self.pairs not in PAIRS:
            raise InputError(f"pairs {self.pairs!r} is unknown", f"use one of {', '.join(PAIRS)}")


@dataclass(frozen=True)
class Passages:
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None
    empty_lines: int
    invalid_utf8_lines: int
    scores: bool = False  # labels are numbers (scores, regression targets), not class indices


def read_passages(path: Path, scores: bool = False) -> Passages:
    """The passages of a .txt or .jsonl file, with the lines skipped and repaired counted.
    Labels are class indices (2.0 is class 2); any number when one of them is a fraction
    (regression targets) or with ``scores`` and pairs (a similarity pair's score)."""
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})", "check the path") from None
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[Any] = []
    numbers: dict[str, list[int]] = {"text_pair": [], "label": []}  # the lines that have each field
    lines: list[int] = []
    empty = invalid = 0
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line, invalid = raw.decode("utf-8", errors="replace"), invalid + 1
        if not line.strip():
            empty += 1
            continue
        if path.suffix == ".txt":
            texts.append(line.strip())
            continue
        record = _record(line, path, number)
        texts.append(record["text"])
        lines.append(number)
        if "text_pair" in record:
            pairs.append(str(record["text_pair"]))
            numbers["text_pair"].append(number)
        if "label" in record:
            labels.append(record["label"])
            numbers["label"].append(number)
    if not texts:
        raise InputError(f"{path} holds no passage", "give one passage a line (.txt) or one JSON object a line (.jsonl)")
    for name, values in (("text_pair", pairs), ("label", labels)):
        if values and len(values) != len(texts):
            first = next(n for n in lines if n not in set(numbers[name]))
            raise InputError(
                f"{path}, line {first} has no {name} ({len(values)} of {len(texts)} records have one)",
                f"give every record a {name}, or none",
            )
    # a fraction (0.8) makes every label a number; 2.0 is still class 2
    scores = scores and bool(pairs) or any(isinstance(label, float) and math.isfinite(label) and not label.is_integer() for label in labels)
    if labels:
        _check_labels(labels, numbers["label"], path, scores)
    return Passages(texts, pairs or None, labels or None, empty, invalid, scores)


def _check_labels(labels: list[Any], numbers: list[int], path: Path, scores: bool) -> None:
    """Class indices (or with ``scores``, finite numbers), named with the first line that breaks the rule."""
    for label, number in zip(labels, numbers, strict=True):
        number_like = isinstance(label, (int, float)) and not isinstance(label, bool)
        if scores and not (number_like and math.isfinite(label)):
            raise InputError(f"{path}, line {number} has the label {label!r}", "give every label as a number: a score, e.g. 0.8")
        if scores:
            continue
        whole = isinstance(label, int) or isinstance(label, float) and math.isfinite(label) and label.is_integer()
        if not whole or isinstance(label, bool) or label < 0:
            raise InputError(
                f"{path}, line {number} has the label {label!r}", "give every label as a class index (0, 1, ...), the model's output order"
            )


def _record(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}, line {number} is not JSON ({exc.msg})", "write one JSON object a line") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InputError(f'{path}, line {number} has no "text" string', 'write {"text": "...", "label": 0} a line')
    return record


def load_text(path: Path, spec: TextSpec) -> Dataset:
    """A text file as token ids, attention mask and token types stacked, ``[passages, 3, seq_len]``
    (int64; see Dataset), with labels when the records have them."""
    if spec.tokenizer is None:
        raise InputError(f"{path} is text, and no tokenizer is given", "pass --tokenizer tokenizer.json (the model's own)")
    separate = spec.pairs == "separate"
    passages = read_passages(path, scores=separate)
    tokenizer, _ = prepared_tokenizer(spec)
    if passages.pairs and not separate:
        ids, truncated = _encoded(tokenizer, list(zip(passages.texts, passages.pairs)))
        pair = None
    else:
        ids, truncated = _encoded(tokenizer, passages.texts)
        pair, truncated_pairs = _encoded(tokenizer, passages.pairs) if passages.pairs else (None, 0)
        truncated += truncated_pairs
    count = len(passages.texts) * (2 if pair is not None else 1)
    y = _labels(passages.labels, passages.scores)
    notes = {
        "tokenizer": str(spec.tokenizer),
        "seq_len": spec.seq_len,
        "passages": count,
        **({"pairs": "separate"} if pair is not None else {}),
        "truncated": truncated,
        "truncated_share": round(truncated / count, 4),
        "empty_lines": passages.empty_lines,
        "invalid_utf8_lines": passages.invalid_utf8_lines,
    }
    return Dataset(ids, y, str(path), (), {"text": notes}, TEXT_INPUTS, pair)


def _encoded(tokenizer: Any, inputs: list[Any]) -> tuple[np.ndarray, int]:
    """Passages (or joined pairs) as token ids, attention mask and token types stacked, and
    how many were truncated."""
    encodings = tokenizer.encode_batch(inputs)
    columns = (
        [encoding.ids for encoding in encodings],
        [encoding.attention_mask for encoding in encodings],
        [encoding.type_ids for encoding in encodings],
    )
    ids = np.stack([np.asarray(column, np.int64) for column in columns], axis=1)
    return ids, sum(bool(encoding.overflowing) for encoding in encodings)


def prepared_tokenizer(spec: TextSpec) -> tuple[Any, int]:
    """The tokenizer set to truncate and pad to ``spec.seq_len``, and its padding id."""
    tokenizer = _tokenizer(spec)
    pad_id = _pad_id(tokenizer)
    tokenizer.enable_truncation(max_length=spec.seq_len)
    tokenizer.enable_padding(length=spec.seq_len, pad_id=pad_id)
    return tokenizer, pad_id


def _tokenizer(spec: TextSpec) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("reading text needs the tokenizers package", "pip install 'edgetune[text]'") from None
    path = Path(spec.tokenizer or "")
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises its own exception type
        raise InputError(f"cannot read the tokenizer {path}: {str(exc).splitlines()[0]}", "give a tokenizer.json") from None


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's own padding id, else its pad token's, else 0."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _labels(labels: list[Any] | None, scores: bool) -> np.ndarray | None:
    """Integer class labels (checked line by line when read: names are refused, since each
    file would number its own classes, and a training and an evaluation file could disagree),
    or float scores and targets."""
    if labels is None:
        return None
    return np.asarray(labels, np.float32 if scores else np.int64)
