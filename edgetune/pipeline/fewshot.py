"""The stages of a run whose fine-tune starts from a meta-learned initialization
(``finetune.init``): the initialization's weights taken right after capture, and the few-shot
adaptation in the fine-tune's place (in float before calibration, or int8 after it)."""

from __future__ import annotations

import numpy as np

from edgetune.data import Dataset
from edgetune.errors import InputError
from edgetune.pipeline.plan import Run
from edgetune.pipeline.stages import Block


class Initialize:
    """The meta-initialization's weights in the captured (or compressed) model."""

    name = "meta-init"

    def wanted(self, run: Run) -> bool:
        return run.plan.init is not None

    def __call__(self, run: Run) -> Block:
        from edgetune.meta.init import apply_init, load_init

        assert run.plan.init is not None
        path = run.plan.init.path
        return Block(apply_init(run.need_graph(), load_init(path), path))


class Adapt:
    """Few-shot adaptation to the training data's classes. Output i of the adapted model is
    the i-th smallest class; the evaluation data is kept to those classes and relabelled so."""

    def __init__(self, qat: bool) -> None:
        self.qat = qat
        self.name = "adapt (int8)" if qat else "adapt"

    def wanted(self, run: Run) -> bool:
        return run.plan.init is not None and (run.plan.init.qat or run.plan.from_compressed) == self.qat

    def __call__(self, run: Run) -> Block:
        from edgetune.meta.adapt import adapt

        assert run.plan.init is not None and run.train_set is not None
        block = adapt(run.need_graph(), run.train_set, run.plan.init.adapt)
        labels = block["classes"]
        # The model before compression knows the old classes: nothing to compare the new ones with.
        run.teacher = None
        run.train_set = relabelled(run.train_set, labels)
        if run.eval_set is not None:
            run.eval_set = relabelled(run.eval_set, labels)
        return Block({"init": run.plan.init.path, **block})


def relabelled(data: Dataset, labels: list[int]) -> Dataset:
    """``data``'s examples of ``labels``, class ``labels[i]`` renamed i (the adapted model's outputs)."""
    if data.y is None or not data.has_classes:
        return data
    keep = np.isin(data.y, labels)
    if not keep.any():
        raise InputError(f"{data.source} holds no example of the adapted classes {labels}", "give evaluation data of data.train's classes")
    names = tuple(data.labels[c] for c in labels) if len(data.labels) > max(labels) else ()
    y = np.searchsorted(labels, data.y[keep]).astype(data.y.dtype)
    return Dataset(
        data.x[keep], y, f"{data.source} (classes {','.join(map(str, labels))} as 0-{len(labels) - 1})", names, data.preprocess, data.inputs
    )
