"""The typed form of a run (:class:`Plan`), the state its stages share (:class:`Run`), and the
runner that times each stage and measures its peak memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from edgetune import timing
from edgetune.capture.models import LoadedModel
from edgetune.data import Dataset
from edgetune.data.text import TextSpec
from edgetune.export.config import ExportConfig
from edgetune.finetune import FinetuneConfig
from edgetune.ir.graph import Graph
from edgetune.progress import Progress, silent
from edgetune.prune import PruneConfig
from edgetune.quantize import QuantConfig
from edgetune.targets import Target

if TYPE_CHECKING:
    from edgetune.meta.init import FewShotInit

ModelSpec = str | nn.Module | LoadedModel
DataSpec = str | Dataset


@dataclass(frozen=True)
class Plan:
    """What one run does, every setting typed: the recipe once its keys are built into the
    stages' configs. ``model`` may name a ``model.edgetune`` that compress wrote: the run then
    starts from that quantized graph and recovers it quantization-aware."""

    model: ModelSpec
    calib: DataSpec | None = None
    eval_data: DataSpec | None = None
    train_data: DataSpec | None = None
    preprocess: str | None = None
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    target: Target | None = None  # None: the host
    quant: QuantConfig = field(default_factory=QuantConfig)
    prune: PruneConfig | None = None
    prune_steps: int = 1
    finetune: FinetuneConfig | None = None
    init: FewShotInit | None = None  # a meta-initialization whose few-shot adaptation replaces the fine-tune
    teacher: ModelSpec | None = None  # for a compressed model: the uncompressed one to distil from
    teacher_weights: str | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    sensitivity: bool = False
    resume: bool = False
    extra_files: dict[str, bytes] = field(default_factory=dict)  # written beside the artifacts (recipe.toml)
    text: TextSpec = field(default_factory=TextSpec)  # how .txt and .jsonl data become token ids

    @cached_property
    def from_compressed(self) -> bool:
        """Whether the model is a compressed graph (compress's model.edgetune, under any name)."""
        from edgetune.ir.serialize import is_graph_file

        return isinstance(self.model, (str, Path)) and (str(self.model).endswith(".edgetune") or is_graph_file(self.model))

    @property
    def trains(self) -> bool:
        """Whether the run trains on data.train: a fine-tune, or a few-shot adaptation."""
        return self.finetune is not None or self.init is not None

    def recovery(self) -> FinetuneConfig | None:
        """The fine-tune each recovery runs: the budget is shared between the pruning steps (one
        part after each, the last after all); a compressed model trains quantization-aware."""
        if self.finetune is None:
            return None
        if self.from_compressed:
            return replace(self.finetune, qat=True)
        if self.prune is not None and self.prune_steps > 1:
            return replace(self.finetune, budget=self.finetune.budget.share(self.prune_steps))
        return self.finetune


class StageResult(Protocol):
    """What a stage did, for the report."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Run:
    """One run's state. Stages read the plan and what earlier stages left here, and add theirs."""

    plan: Plan
    out: Path  # the output folder, checked before any work
    target: Target
    progress: Progress = silent
    source: str = ""  # the model as the user named it
    loaded: LoadedModel | None = None
    calib_set: Dataset | None = None
    eval_set: Dataset | None = None
    train_set: Dataset | None = None
    shape: tuple[int, ...] = ()
    graph: Graph | None = None
    teacher: Graph | None = None  # the model before compression, for distillation and the report
    baseline: Graph | None = None  # compressed, not yet recovered: for the report's accuracies
    calib_part: Dataset | None = None  # the samples calibration used
    holdout: Dataset | None = None  # calibration samples it did not use
    checkpoint: Path | None = None
    artifacts: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # other files to publish (sensitivity.png)
    smoke: list[Any] = field(default_factory=list)  # TFLite smoke runs in child processes
    results: dict[str, StageResult] = field(default_factory=dict)  # by stage name, in order
    records: list[StageRecord] = field(default_factory=list)
    spans: list[timing.Span] = field(default_factory=list)  # each stage's steps, for the report's profile
    started: float = field(default_factory=time.perf_counter)  # when the run began, after the command's imports
    silent_rank: bool = False  # a torchrun process other than the first: it writes nothing

    def result(self, kind: type[Any]) -> Any:
        """The result of the stage that returned a ``kind``, or None when none ran."""
        return next((r for r in self.results.values() if isinstance(r, kind)), None)

    def need_graph(self) -> Graph:
        assert self.graph is not None, "a stage before this one captures the graph"
        return self.graph


class Stage(Protocol):
    """One step of a run. ``name`` keys its timing and result; ``wanted`` says whether the plan
    asks for it; ``__call__`` does it and returns its result (None: nothing to report)."""

    name: str

    def wanted(self, run: Run) -> bool: ...

    def __call__(self, run: Run) -> StageResult | None: ...


@dataclass(frozen=True)
class StageRecord:
    name: str
    seconds: float
    peak_rss_bytes: int | None  # resident peak (None off Linux)
    peak_scope: str  # "stage": the stage's own peak; "process": the process's so far (no reset here)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds, "peak_rss_bytes": self.peak_rss_bytes, "peak_scope": self.peak_scope}


def run_stages(run: Run, stages: tuple[Stage, ...]) -> Run:
    """Each wanted stage in order, timed and with its peak memory; stops early on a process of a
    torchrun group other than the first, which leaves the writing to that one."""
    for stage in stages:
        if run.silent_rank:
            break
        if not stage.wanted(run):
            continue
        scope = "stage" if _reset_peak() else "process"
        with timing.stage(stage.name) as span:
            result = stage(run)
        run.spans.append(span)
        run.records.append(StageRecord(stage.name, round(span.seconds, 4), _peak(), scope))
        if result is not None:
            run.results[stage.name] = result
    return run


def _reset_peak() -> bool:
    """Start the kernel's resident high-water mark anew (Linux: ``clear_refs`` 5), so that each
    stage's peak is its own and not an earlier stage's; False where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
