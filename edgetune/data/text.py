"""Text data: passages read from ``.txt`` (one a line) or ``.jsonl`` (``text``, optional
``label`` and ``text_pair``) and tokenized into token ids of one fixed length with a
``tokenizer.json`` (Hugging Face's ``tokenizers`` package, ``pip install 'edgetune[text]'``).

Longer passages are truncated and shorter ones padded; neither is an error. Empty lines are
skipped, and bytes that are not UTF-8 are replaced; the counts of all three go with the data
(``Dataset.preprocess``), so that the report and the artifacts' metadata carry them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.data.dataset import Dataset
from edgetune.errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl")
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


@dataclass(frozen=True)
class TextSpec:
    """How passages become token ids: the tokenizer file and the fixed sequence length."""

    tokenizer: str | None = None
    seq_len: int = 128

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise InputError(f"--seq-len {self.seq_len} is not positive", "give the sequence length the model is written for, e.g. 128")


@dataclass(frozen=True)
class Passages:
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None
    empty_lines: int
    invalid_utf8_lines: int


def read_passages(path: Path) -> Passages:
    """The passages of a .txt or .jsonl file, with the lines skipped and repaired counted."""
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
    if labels:
        _check_labels(labels, numbers["label"], path)
    return Passages(texts, pairs or None, labels or None, empty, invalid)


def _check_labels(labels: list[Any], numbers: list[int], path: Path) -> None:
    """Class indices only, named with the first line that breaks the rule."""
    for label, number in zip(labels, numbers, strict=True):
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
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
    passages = read_passages(path)
    tokenizer, _ = prepared_tokenizer(spec)
    inputs: list[Any] = list(zip(passages.texts, passages.pairs)) if passages.pairs else passages.texts
    encodings = tokenizer.encode_batch(inputs)
    # What a BERT-style forward takes; the model's own arguments are chosen from them (pipeline/load.py).
    columns = {
        "input_ids": [encoding.ids for encoding in encodings],
        "attention_mask": [encoding.attention_mask for encoding in encodings],
        "token_type_ids": [encoding.type_ids for encoding in encodings],
    }
    ids = np.stack([np.asarray(column, np.int64) for column in columns.values()], axis=1)
    truncated = sum(bool(encoding.overflowing) for encoding in encodings)
    y = _labels(passages.labels, path)
    notes = {
        "tokenizer": str(spec.tokenizer),
        "seq_len": spec.seq_len,
        "passages": len(passages.texts),
        "truncated": truncated,
        "truncated_share": round(truncated / len(passages.texts), 4),
        "empty_lines": passages.empty_lines,
        "invalid_utf8_lines": passages.invalid_utf8_lines,
    }
    return Dataset(ids, y, str(path), (), {"text": notes}, tuple(columns))


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


def _labels(labels: list[Any] | None, path: Path) -> np.ndarray | None:
    """Integer class labels (checked line by line when read: names are refused, since each
    file would number its own classes, and a training and an evaluation file could disagree)."""
    return None if labels is None else np.asarray(labels, np.int64)
