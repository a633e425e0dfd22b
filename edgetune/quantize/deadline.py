"""A modeled plan held to a wall clock.

AdaRound's budget becomes iterations through a cost model, so that the same inputs give the same
artifact on any machine that keeps up with the model. A machine that does not (a slower CPU, a
busy neighbour on the same core, a model unlike the ones the costs were fitted on) would overrun
the budget, and a budget is a promise. :class:`Schedule` watches the clock as the work goes:
while the work done so far, at the pace it actually ran, projects a finish within the deadline,
every layer gets its planned iterations (and the artifact stays machine-independent); once it
does not, the layers left share the time left, and the report says the clock decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Schedule:
    deadline: float  # time.perf_counter() value by which the work must end
    remaining: dict[str, float]  # modeled seconds of each unit of work not yet done, in order
    started: float = field(default_factory=time.perf_counter)
    modeled_done: float = 0.0
    shortened: list[str] = field(default_factory=list)  # units given fewer iterations than planned

    def share(self, name: str, planned: int) -> int:
        """Iterations for unit ``name``: the planned ones while the projected finish (the modeled
        work left, at the pace observed so far: seconds taken per modeled second) is within the
        deadline, else the planned ones scaled to the time left. The first unit, before any pace
        is seen, gets its plan; the deadline still stops it (:meth:`passed`)."""
        if self.modeled_done <= 0:
            return planned
        now = time.perf_counter()
        projected = sum(self.remaining.values()) * (now - self.started) / self.modeled_done
        if now + projected <= self.deadline:
            return planned
        self.shortened.append(name)
        return int(planned * max(self.deadline - now, 0.0) / max(projected, 1e-9))

    def done(self, name: str) -> None:
        self.modeled_done += self.remaining.pop(name, 0.0)

    def passed(self) -> bool:
        return time.perf_counter() >= self.deadline
