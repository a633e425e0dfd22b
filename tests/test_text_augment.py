"""Text augmentation (edgetune/finetune/text_augment.py): word-level edits after EDA, a synonym
table, a user paraphraser; passages decoded with the model's tokenizer, edited and encoded
again batch by batch, seeded, with the share of augmented passages in the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_inputs import jsonl_files  # noqa: F401  (a module-scoped fixture)

from edgetune.cli.main import run
from edgetune.errors import InputError
from edgetune.finetune.augment import parse_augment
from edgetune.finetune.text_augment import EDITS, TextAugmenter, Vocabulary, read_synonyms

WORDS = "the rain was on the server and the wind was in the cloud".split()


@pytest.mark.parametrize("seed", range(5))
def test_each_edit_does_what_eda_says(seed: int) -> None:
    vocabulary = Vocabulary("[MASK]", {"rain": ["drizzle"], "cloud": ["mist", "fog"]})
    edit = {name: EDITS[name](WORDS, random.Random(seed), vocabulary, 0.25) for name in ("mask", "delete", "swap", "insert", "synonyms")}
    assert sorted(edit["swap"]) == sorted(WORDS) and edit["swap"] != WORDS
    deleted = EDITS["delete"](WORDS, random.Random(seed), vocabulary, 0.5)  # each word with probability 0.5
    assert 1 <= len(deleted) < len(WORDS) and all(word in WORDS for word in deleted)
    allowed = set(WORDS) | {"drizzle", "mist", "fog"}  # a synonym of a passage word, or the word itself
    assert len(edit["insert"]) == len(WORDS) + 3 and set(edit["insert"]) <= allowed
    masked = [i for i, word in enumerate(edit["mask"]) if word == "[MASK]"]
    assert [w for i, w in enumerate(edit["mask"]) if i not in masked] == [w for i, w in enumerate(WORDS) if i not in masked]
    changed = [(a, b) for a, b in zip(WORDS, edit["synonyms"]) if a != b]
    assert changed and all(b in vocabulary.synonyms[a] for a, b in changed)
    assert EDITS["delete"](["one"], random.Random(seed), vocabulary, 1.0) == ["one"], "a passage keeps a word"


def test_synonym_tables_read_tsv_and_json_and_name_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / "table.tsv").write_text("# word, synonyms\nRain\tdrizzle\tshower\n\ncloud\tmist\n")
    assert read_synonyms(tmp_path / "table.tsv") == {"rain": ["drizzle", "shower"], "cloud": ["mist"]}
    (tmp_path / "table.json").write_text('{"rain": ["drizzle"],\n "cloud": ["mist"]}')
    assert read_synonyms(tmp_path / "table.json") == {"rain": ["drizzle"], "cloud": ["mist"]}
    for name, content, message in (
        ("bad.tsv", "rain\tdrizzle\ncloud mist\n", "bad.tsv, line 2 is not a word and its synonyms separated by tabs"),
        ("bad2.tsv", "rain\tdrizzle\n\ncloud\t\n", "bad2.tsv, line 3 is not"),
        ("bad.json", '{"rain": ["drizzle"],\n "cloud": "mist"}', "bad.json, line 2: the synonyms of 'cloud' are not a list"),
        ("broken.json", '{"rain": ["drizzle"],\n\n "cloud" ["mist"]}', "broken.json, line 3 is not valid JSON"),
    ):
        (tmp_path / name).write_text(content)
        with pytest.raises(InputError, match=message):
            read_synonyms(tmp_path / name)


def _augmenter(files: Path, spec: str, seq_len: int = 20) -> tuple[TextAugmenter, torch.Tensor]:
    from edgetune.data import load_dataset
    from edgetune.data.text import TextSpec

    data = load_dataset(str(files / "train.jsonl"), "train", text=TextSpec(str(files / "tokenizer.json"), seq_len))
    return TextAugmenter(parse_augment(spec).text, data.preprocess, ("input_ids",), data.source), torch.from_numpy(data.x[:64, 0])


def test_batches_are_edited_seeded_and_in_the_stated_share(jsonl_files: Path) -> None:  # noqa: F811
    augmenter, ids = _augmenter(jsonl_files, "delete:0.2,swap:0.2,share:0.5")
    assert augmenter.roundtrip_share(ids.numpy()[:, None][:, 0]) == 1.0, "a word-level tokenizer decodes and encodes back exactly"
    first = augmenter(ids, torch.Generator().manual_seed(7))
    again = augmenter(ids, torch.Generator().manual_seed(7))
    other = augmenter(ids, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    changed = (first != ids).any(dim=1)
    assert 0.2 < changed.float().mean() < 0.8 and augmenter.report()["augmented"] >= int(changed.sum())
    for before, after in zip(ids[changed], first[changed]):
        real = before[before != 0]
        assert set(after[after != 0].tolist()) <= set(real.tolist()), "delete and swap only use the passage's own words"


def test_a_paraphraser_rewrites_passages_and_a_bad_one_is_named(jsonl_files: Path, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "para.py").write_text(
        "def rain(texts, seed):\n    return ['rain ' * 3 for _ in texts]\n\ndef short(texts, seed):\n    return texts[:1]\n"
    )
    augmenter, ids = _augmenter(jsonl_files, f"paraphrase:{tmp_path / 'para.py'}:rain,share:1")
    out = augmenter(ids[:4], torch.Generator().manual_seed(0))
    rain = augmenter.encode([["rain rain rain"]])[0]
    assert all(torch.equal(row, rain) for row in out)
    augmenter, ids = _augmenter(jsonl_files, f"paraphrase:{tmp_path / 'para.py'}:short,share:1")
    with pytest.raises(InputError, match="returned list, not 4 strings"):
        augmenter(ids[:4], torch.Generator().manual_seed(0))


def test_fine_tune_with_text_augmentation_repeats_and_reports_its_share(
    jsonl_files: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    f = {name: str(jsonl_files / name) for name in ("train.jsonl", "test.jsonl", "tokenizer.json")}
    (tmp_path / "syn.tsv").write_text("rain\tstorm\nserver\tcode\n")
    argv = ["compress", str(jsonl_files / "model.py:build"), "--calib", f["train.jsonl"], "--train", f["train.jsonl"]]
    argv += ["--eval", f["test.jsonl"], "--tokenizer", f["tokenizer.json"], "--seq-len", "20", "--finetune", "60steps"]
    argv += ["--augment", f"delete:0.1,swap:0.1,insert:0.1,synonyms:{tmp_path / 'syn.tsv'},share:0.4", "--formats", "onnx", "--quiet"]
    for out in ("a", "b"):
        assert run([*argv, "-o", str(tmp_path / out)]) == 0
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    text = report["finetune"]["text_augmentation"]
    assert text["seen"] == 5 * 360 and 0.3 < text["augmented_share"] < 0.5 and text["roundtrip_exact_share"] == 1.0
    # 60 steps of 32 over 360 training passages (40 validate) are 5 epochs
    assert report["finetune"]["config"]["augment"][-1] == "share:0.4" and report["finetune"]["steps_per_second"] > 0
    recipe = (tmp_path / "a" / "recipe.toml").read_text()
    assert f"synonyms:{tmp_path / 'syn.tsv'}" in recipe
    assert report["evaluation"]["int8_accuracy"] >= 0.7


@pytest.mark.parametrize(
    ("augment", "data", "message"),
    [
        ("shift:2", "text", "augmentation shift:2 transforms images or signals, and"),
        ("delete:0.1", "digits", "edits passages, and digits:train"),
        ("mask:0.2", "text", "augmentation mask needs a mask token, and the tokenizer has none"),
        ("synonyms:BAD", "text", "bad.tsv, line 1 is not a word and its synonyms"),
        ("delete:1.5", "text", "augmentation delete:1.5 is not a share in (0, 1]"),
        ("share:0.5", "text", "no edit is given"),
    ],
    ids=["shift-on-ids", "edit-on-images", "no-mask-token", "bad-table", "bad-share", "share-alone"],
)
def test_bad_augmentation_is_one_line(
    jsonl_files: Path,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    augment: str,
    data: str,
    message: str,
) -> None:
    (tmp_path / "bad.tsv").write_text("rain storm\n")
    augment = augment.replace("BAD", str(tmp_path / "bad.tsv"))
    if data == "text":
        f = {name: str(jsonl_files / name) for name in ("train.jsonl", "tokenizer.json")}
        argv = ["compress", str(jsonl_files / "model.py:build"), "--calib", f["train.jsonl"], "--train", f["train.jsonl"]]
        argv += ["--tokenizer", f["tokenizer.json"], "--seq-len", "20"]
    else:
        argv = ["compress", "edgetune.zoo:digits_cnn", "--calib", "digits", "--train", "digits:train"]
    capfd.readouterr()
    assert run([*argv, "--finetune", "5steps", "--augment", augment, "-o", str(tmp_path / "z")]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "z").exists()
    assert np.isfinite(0.0)


def test_finetune_command_trains_an_uncompressed_text_model_and_the_recipe_replays_it(
    jsonl_files: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``edgetune finetune MODEL`` on labelled passages: a float fine-tune (calibrated on the
    training data when no --calib is given), the fp32 result beside both int8 artifacts,
    and a recipe that replays it to the byte."""
    f = {name: str(jsonl_files / name) for name in ("train.jsonl", "test.jsonl", "tokenizer.json")}
    argv = ["finetune", str(jsonl_files / "model.py:build"), "--train", f["train.jsonl"], "--eval", f["test.jsonl"]]
    argv += ["--tokenizer", f["tokenizer.json"], "--seq-len", "20", "--finetune", "80steps", "--task", "classify"]
    argv += ["--lr-decay", "0.8", "--augment", "swap:0.1,delete:0.1", "--quiet"]
    assert run([*argv, "-o", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    tuned = report["finetune"]
    assert tuned["task"] == "classification" and "qat" not in tuned and tuned["learning_rate"]["decay_per_layer"] == 0.8
    assert report["quantization"]["calibration"]["source"] == f["train.jsonl"]
    assert report["evaluation"]["fp32_accuracy"] >= 0.7 and {"model.fp32.onnx", "model.tflite"} <= {
        p.name for p in (tmp_path / "a").iterdir()
    }
    assert run(["compress", "--recipe", str(tmp_path / "a" / "recipe.toml"), "-o", str(tmp_path / "b"), "--quiet"]) == 0
    for name in ("model.fp32.onnx", "model.onnx", "model.tflite"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
