"""Which of a data set's named inputs feed which of a model's arguments.

Data names its inputs when it comes from an ``.npz`` of one array per forward argument, or
from text (token ids, attention mask and token types). A model names its inputs by its
forward's arguments (a module), its signature (a ``.pt2``) or its graph inputs (an ``.onnx``,
an artifact). Names match by equality; token ids also feed a first argument named otherwise
(``forward(self, ids)``), and one array feeds a model's one required input whatever its name.
"""

from __future__ import annotations

from dataclasses import replace

from edgetune.data.dataset import Dataset
from edgetune.errors import InputError

TOKEN_IDS = "input_ids"


def match_inputs(data: Dataset, names: list[str], required: list[str], role: str = "") -> Dataset:
    """``data`` with the inputs the model takes, in the model's order and under its names.

    Text gives what a BERT-style forward may take; what the model does not take is left out.
    An ``.npz`` array that no argument takes is refused (a misspelt name would otherwise be
    dropped in silence), and so is a required argument that the data does not give.
    """
    what = f"{role} data {data.source}" if role else f"data {data.source}"
    if not data.inputs:
        missing = [name for name in required if name != names[0]]
        if missing:
            raise InputError(
                f"the model also takes {', '.join(missing)}, and {what} gives one array",
                "save one array per forward argument in an .npz (input_ids=..., attention_mask=...)",
            )
        return data
    if not names:
        if data.stacked:
            raise InputError(
                f"{what} gives {', '.join(data.inputs)}, and the model names no argument", "give a forward with named arguments"
            )
        return data
    given = list(data.inputs)
    chosen = {name: name for name in names if name in given}
    if names[0] not in chosen:
        if TOKEN_IDS in given and TOKEN_IDS not in names:
            chosen[names[0]] = TOKEN_IDS
        elif len(given) == 1 and not chosen:
            chosen[names[0]] = given[0]
    missing = [name for name in required if name not in chosen]
    if missing:
        raise InputError(
            f"the model takes {', '.join(missing)}, which {what} does not give (it gives {', '.join(given)})",
            "give one array per forward argument, named like it",
        )
    unused = [name for name in given if name not in chosen.values()]
    if unused and "text" not in data.preprocess:
        raise InputError(
            f"{what} gives {', '.join(unused)}, which the model does not take (it takes {', '.join(names)})",
            "name the arrays like the forward's arguments, or leave them out",
        )
    order = [name for name in names if name in chosen]
    selected = data.select([chosen[name] for name in order])
    return replace(selected, inputs=tuple(order))
