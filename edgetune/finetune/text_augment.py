"""Text augmentation: word-level edits of training passages, re-tokenized batch by batch.

``--augment delete:0.1,swap:0.1,share:0.5`` on text data. A fine-tune batch holds token ids;
each passage drawn for augmentation is decoded back to text with the model's tokenizer (its
normalized form: an uncased tokenizer gives lower case), edited, and encoded again with the
same length, padding and segments. The edits, after EDA (Wei and Zou, "EDA: Easy Data
Augmentation Techniques for Boosting Performance on Text Classification Tasks", 2019):

- ``mask:P``: each word becomes the tokenizer's mask token with probability P (token masking);
- ``delete:P``: each word is dropped with probability P (one always stays);
- ``swap:P``: round(P x words) swaps of two random words (at least one);
- ``insert:P``: round(P x words) insertions, at random places, of a synonym of a random word
  of the passage (from ``synonyms:``), else of the word itself;
- ``synonyms:FILE``: a tenth of the words (at least one) that the table knows replaced by one
  of their synonyms. The table is TSV (``word<TAB>synonym[<TAB>synonym...]``) or JSON
  (``{"word": ["synonym", ...]}``); words match in lower case;
- ``paraphrase:module:callable`` (or ``file.py:callable``): a user function
  ``(texts: list[str], seed: int) -> list[str]`` that rewrites passages, e.g. a
  back-translation; it gets every passage drawn for it in a batch at once.

``share:S`` (default 0.5) is the probability that a passage of a batch is augmented; an
augmented passage gets one edit, drawn uniformly from the chain (EDA's one operation per
augmented sentence). Longpre et al. (2020) found such augmentation does not reliably help a
pretrained transformer, so ``bench/text_recover.py`` measures it. Randomness comes from the
fine-tune's per-step generator: a seeded run repeats exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune.errors import InputError
from edgetune.registry import Registry

Edit = Callable[[list[str], random.Random, "Vocabulary", float], list[str]]
EDITS: Registry[Edit] = Registry("text augmentation")
edit = EDITS.register
DEFAULTS = {"mask": 0.15, "delete": 0.1, "swap": 0.1, "insert": 0.1, "share": 0.5}
SYNONYM_SHARE = 0.1  # the share of a passage's words synonyms: replaces (EDA's alpha)
MASK_TOKENS = ("[MASK]", "<mask>", "<MASK>")
COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
_TABLE_HINT = "write one word a line followed by its synonyms, tab-separated, or a JSON object of word -> [synonyms]"


@dataclass
class Vocabulary:
    """What edits draw on besides the passage: the mask token and the synonym table."""

    mask: str = "[MASK]"
    synonyms: dict[str, list[str]] = field(default_factory=dict)


@edit("mask")
def mask_words(words: list[str], rng: random.Random, vocabulary: Vocabulary, share: float) -> list[str]:
    return [vocabulary.mask if rng.random() < share else word for word in words]


@edit("delete")
def delete_words(words: list[str], rng: random.Random, vocabulary: Vocabulary, share: float) -> list[str]:
    kept = [word for word in words if rng.random() >= share]
    return kept or [rng.choice(words)]


@edit("swap")
def swap_words(words: list[str], rng: random.Random, vocabulary: Vocabulary, share: float) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(max(1, round(share * len(out)))):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


@edit("insert")
def insert_words(words: list[str], rng: random.Random, vocabulary: Vocabulary, share: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(share * len(words)))):
        word = rng.choice(words)
        choices = vocabulary.synonyms.get(word.lower())
        out.insert(rng.randrange(len(out) + 1), rng.choice(choices) if choices else word)
    return out


@edit("synonyms")
def replace_synonyms(words: list[str], rng: random.Random, vocabulary: Vocabulary, share: float) -> list[str]:
    known = [i for i, word in enumerate(words) if word.lower() in vocabulary.synonyms]
    out = list(words)
    for i in rng.sample(known, min(len(known), max(1, round(share * len(words))))):
        out[i] = rng.choice(vocabulary.synonyms[words[i].lower()])
    return out


def read_synonyms(path: Path) -> dict[str, list[str]]:
    """A synonym table (TSV or JSON) as lower-case word -> synonyms; a bad line is named."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the synonym table {path} ({getattr(exc, 'strerror', None) or exc})", "check the path") from None
    if path.suffix.lower() == ".json":
        return _json_synonyms(text, path)
    table: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) < 2 or not all(cells) or any(" " in cell for cell in cells[:1]):
            raise InputError(f"{path}, line {number} is not a word and its synonyms separated by tabs", _TABLE_HINT)
        table.setdefault(cells[0].lower(), []).extend(cells[1:])
    if not table:
        raise InputError(f"the synonym table {path} is empty", _TABLE_HINT)
    return table


def _json_synonyms(text: str, path: Path) -> dict[str, list[str]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}, line {exc.lineno} is not valid JSON ({exc.msg})", _TABLE_HINT) from None
    if not isinstance(document, dict) or not document:
        raise InputError(f"the synonym table {path} is not a non-empty JSON object", _TABLE_HINT)
    table: dict[str, list[str]] = {}
    for word, synonyms in document.items():
        if not isinstance(synonyms, list) or not synonyms or not all(isinstance(s, str) and s.strip() for s in synonyms):
            line = 1 + text[: text.find(json.dumps(word))].count("\n") if json.dumps(word) in text else "?"
            raise InputError(f"{path}, line {line}: the synonyms of {word!r} are not a list of words", _TABLE_HINT)
        table.setdefault(word.lower(), []).extend(s.strip() for s in synonyms)
    return table


@dataclass(frozen=True)
class TextChain:
    """The parsed text part of ``--augment``: the edits, a paraphrase callable, the share."""

    edits: tuple[tuple[str, float], ...] = ()
    synonyms: str | None = None  # the table's path
    paraphrase: str | None = None  # module:callable or file.py:callable
    share: float = DEFAULTS["share"]

    def __bool__(self) -> bool:
        return bool(self.edits or self.paraphrase)

    def describe(self) -> list[str]:
        names = [f"synonyms:{self.synonyms}" if name == "synonyms" else f"{name}:{value:g}" for name, value in self.edits]
        names += [f"paraphrase:{self.paraphrase}"] if self.paraphrase else []
        return names + ([f"share:{self.share:g}"] if self else [])


def is_text_item(name: str) -> bool:
    return name in EDITS or name in ("paraphrase", "share")


def add_item(chain: TextChain, name: str, raw: str) -> TextChain:
    """``chain`` with one more ``name:raw`` item of ``--augment``."""
    from edgetune.numbers import parse_finite

    if name == "paraphrase":
        if not raw:
            raise InputError("augmentation paraphrase needs a callable", "write paraphrase:module:callable or paraphrase:file.py:callable")
        return TextChain(chain.edits, chain.synonyms, raw, chain.share)
    if name == "synonyms":
        if not raw:
            raise InputError("augmentation synonyms needs a table", "write synonyms:FILE (TSV or JSON)")
        return TextChain((*chain.edits, ("synonyms", SYNONYM_SHARE)), raw, chain.paraphrase, chain.share)
    value = parse_finite(raw, f"augmentation {name}", f"{name}:{DEFAULTS[name]}") if raw else DEFAULTS[name]
    if not 0.0 < value <= 1.0:
        raise InputError(f"augmentation {name}:{value:g} is not a share in (0, 1]", f"e.g. {name}:{DEFAULTS[name]}")
    if name == "share":
        return TextChain(chain.edits, chain.synonyms, chain.paraphrase, value)
    return TextChain((*chain.edits, (name, value)), chain.synonyms, chain.paraphrase, chain.share)


class TextAugmenter:
    """Decodes, edits and re-encodes the token-id samples of one text data set."""

    def __init__(self, chain: TextChain, preprocess: dict[str, Any], inputs: Sequence[str], source: str) -> None:
        from edgetune.data.text import TextSpec, prepared_tokenizer

        notes = preprocess.get("text")
        if not isinstance(notes, dict):
            raise InputError(
                f"text augmentation ({', '.join(chain.describe())}) edits passages, and {source} is not text",
                "drop it, or train on .txt/.jsonl passages",
            )
        names = tuple(inputs) if len(inputs) > 1 else ("input_ids",)  # one input: the token ids, whatever its name
        unknown = [name for name in names if name not in COLUMNS]
        if unknown or "input_ids" not in names:
            raise InputError(
                f"text augmentation re-tokenizes {', '.join(COLUMNS)}, and the model reads {', '.join(names)}",
                "train without text augmentation",
            )
        self.chain, self.names = chain, names
        self.tokenizer, self.pad_id = prepared_tokenizer(TextSpec(str(notes["tokenizer"]), int(notes["seq_len"])))
        special = {i: token.content for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        self.separators = {i for i, content in special.items() if content in ("[SEP]", "</s>")}
        mask = next((token for token in MASK_TOKENS if token in special.values()), None)
        if mask is None and any(name == "mask" for name, _ in chain.edits):
            raise InputError("augmentation mask needs a mask token, and the tokenizer has none", "use delete or swap instead")
        synonyms = read_synonyms(Path(chain.synonyms)) if chain.synonyms else {}
        self.vocabulary = Vocabulary(mask or "[MASK]", synonyms)
        self.paraphrase: Callable[..., Any] | None = None
        if chain.paraphrase:
            from edgetune.callables import load_callable

            self.paraphrase = load_callable(chain.paraphrase, "paraphrase augmentation")
        self.seen = self.augmented = 0
        self.exact = 1.0  # roundtrip_share of the training set, measured by the fine-tune

    # -- ids <-> text ---------------------------------------------------------------------
    def texts(self, ids: np.ndarray) -> list[str]:
        """A sample's passage (one text, or a pair's two), in the tokenizer's normalized form."""
        tokens = ids.tolist()
        while tokens and tokens[-1] == self.pad_id:
            tokens.pop()
        segments: list[list[int]] = [[]]
        for token in tokens:
            if token in self.separators:
                segments.append([])
            else:
                segments[-1].append(token)
        texts = [self.tokenizer.decode(segment, skip_special_tokens=True) for segment in segments]
        return [text for text in texts if text.strip()][:2] or [""]

    def encode(self, passages: list[list[str]]) -> torch.Tensor:
        items: list[Any] = [tuple(p) if len(p) == 2 else p[0] for p in passages]
        encodings = self.tokenizer.encode_batch(items)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        rows = [torch.tensor(columns[name], dtype=torch.int64) for name in self.names]
        return torch.stack(rows, dim=1) if len(rows) > 1 else rows[0]

    def roundtrip_share(self, x: np.ndarray, count: int = 64) -> float:
        """The share of the first ``count`` samples that decode and encode back to the same ids."""
        sample = x[:count]
        ids = sample[:, self.names.index("input_ids")] if len(self.names) > 1 else sample
        again = self.encode([self.texts(row) for row in ids]).numpy()
        return float(np.mean([np.array_equal(a, b) for a, b in zip(again, sample)]))

    # -- one batch --------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        chosen = [i for i in range(len(x)) if rng.random() < self.chain.share]
        self.seen += len(x)
        if not chosen:
            return x
        ids = x[:, self.names.index("input_ids")] if len(self.names) > 1 else x
        passages = {i: self.texts(ids[i].numpy()) for i in chosen}
        kinds = [name for name, _ in self.chain.edits] + (["paraphrase"] if self.paraphrase else [])
        picked = {i: rng.choice(kinds) for i in chosen}
        shares = dict(self.chain.edits)
        for i in chosen:
            if picked[i] != "paraphrase":
                passages[i] = [
                    " ".join(EDITS[picked[i]](text.split() or [text], rng, self.vocabulary, shares[picked[i]])) for text in passages[i]
                ]
        rewrite = [i for i in chosen if picked[i] == "paraphrase"]
        if rewrite:
            passages |= self._paraphrased(rewrite, passages, rng.randrange(2**31))
        out = x.clone()
        out[chosen] = self.encode([passages[i] for i in chosen])
        self.augmented += len(chosen)
        return out

    def _paraphrased(self, rows: list[int], passages: dict[int, list[str]], seed: int) -> dict[int, list[str]]:
        from edgetune.callables import user_code

        assert self.paraphrase is not None
        flat = [text for i in rows for text in passages[i]]
        with user_code(f"the paraphrase augmentation {self.chain.paraphrase}", "fix the callable or run with --debug"):
            result = self.paraphrase(list(flat), seed)
        if not isinstance(result, list) or len(result) != len(flat) or not all(isinstance(text, str) for text in result):
            raise InputError(
                f"the paraphrase augmentation {self.chain.paraphrase} returned {type(result).__name__}, not {len(flat)} strings",
                "return one rewritten passage per passage given",
            )
        out, position = {}, 0
        for i in rows:
            out[i] = result[position : position + len(passages[i])]
            position += len(passages[i])
        return out

    def report(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "augmented": self.augmented,
            "augmented_share": round(self.augmented / max(1, self.seen), 4),
            "roundtrip_exact_share": round(self.exact, 4),
            "note": "passages decoded to the tokenizer's normalized text, edited and encoded again; roundtrip_exact_share"
            " is the share of training passages that encode back to their own ids unedited",
        }
