"""Make the intents data set: short spoken-style commands to a home assistant, five intents,
written from templates with a seeded generator; and a word-level tokenizer.json trained on
the training commands ([CLS] command [SEP], padded with [PAD]).

    python calibration/intents/make.py    # rewrites train.jsonl, test.jsonl and tokenizer.json here

Labels: 0 lights on, 1 lights off, 2 set a timer, 3 play music, 4 weather.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOMS = ["kitchen", "bedroom", "living room", "hallway", "bathroom", "office", "garage"]
POLITE = ["", "please", "could you", "can you", "hey", "now"]
NUMBERS = ["one", "two", "three", "five", "ten", "fifteen", "twenty", "thirty"]
UNITS = ["minutes", "seconds", "hours"]
ARTISTS = ["jazz", "some rock", "classical music", "the radio", "my playlist", "something relaxing", "the news podcast"]
DAYS = ["today", "tomorrow", "this weekend", "tonight", "on monday", "this afternoon"]
INTENTS = [
    ["{p} turn on the lights in the {room}", "{p} switch the {room} light on", "lights on in the {room} {p}", "{p} make the {room} brighter"],
    ["{p} turn off the lights in the {room}", "{p} switch the {room} light off", "lights off in the {room} {p}", "{p} make the {room} dark"],
    ["{p} set a timer for {n} {unit}", "{p} start a {n} {unit} timer", "timer {n} {unit} {p}", "{p} remind me in {n} {unit}"],
    ["{p} play {music}", "{p} put on {music}", "i want to hear {music} {p}", "{p} start playing {music} in the {room}"],
    ["{p} what is the weather {day}", "{p} will it rain {day}", "how cold is it {day} {p}", "{p} do i need an umbrella {day}"],
]


def command(rng: random.Random, label: int) -> str:
    template = rng.choice(INTENTS[label])
    words = template.format(
        p=rng.choice(POLITE), room=rng.choice(ROOMS), n=rng.choice(NUMBERS), unit=rng.choice(UNITS), music=rng.choice(ARTISTS), day=rng.choice(DAYS)
    )
    return " ".join(words.split())


def main() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    for name, count in (("train", 500), ("test", 200)):
        records = [{"text": command(rng, label), "label": label} for label in (rng.randrange(len(INTENTS)) for _ in range(count))]
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train([str(HERE / "train.jsonl")], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.save(str(HERE / "tokenizer.json"))
    print(f"wrote train.jsonl, test.jsonl and tokenizer.json ({tokenizer.get_vocab_size()} tokens) in {HERE}")


if __name__ == "__main__":
    main()
