"""Per-iteration run control for tabular solvers: periodic and signal checkpoints.

Solvers fold ``flags()`` into the reduction they already do every iteration
(so agreement costs nothing extra), then call ``after(...)`` with the agreed
flags: it writes the checkpoint when due and raises ``Checkpointed`` on a stop
signal, on every rank together.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from hpcql import signals
from hpcql.checkpoint import Checkpoint, Checkpointed, CheckpointStore
from hpcql.config import CheckpointSection
from hpcql.timing import PhaseTimer


class RunControl:
    """Checkpoint triggers (seconds, iterations, signals) for one solver run."""

    def __init__(self, store: CheckpointStore | None, section: CheckpointSection, offsets: np.ndarray,
                 timer: PhaseTimer, resumed: Checkpoint | None = None) -> None:
        self.store = store if section.enabled else None
        self.section = section
        self.offsets = offsets
        self.timer = timer
        self.resumed = resumed
        self.last_save = time.monotonic()

    @property
    def start_step(self) -> int:
        return self.resumed.step if self.resumed else 0

    @property
    def start_meta(self) -> dict[str, Any]:
        return dict(self.resumed.meta) if self.resumed else {}

    def initial_values(self, row_start: int, row_stop: int) -> np.ndarray | None:
        """This rank's rows of V from the resumed checkpoint (any partition), or None."""
        return self.resumed.rows("V", row_start, row_stop) if self.resumed else None

    def flags(self, step: int) -> tuple[float, float]:
        """Local (checkpoint due, stop signal) as 0/1, to be max-reduced by the solver."""
        if self.store is None:
            return 0.0, float(signals.requested())
        s = self.section
        due = (s.every_iterations > 0 and step % s.every_iterations == 0) or (
            s.every_seconds > 0 and time.monotonic() - self.last_save >= s.every_seconds)
        return float(due), float(signals.requested())

    def after(self, step: int, due: bool, stop: bool, v_local: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Save when due or stopping (collective once flags agree); raise ``Checkpointed`` on a stop."""
        if self.store is not None and (due or stop):
            with self.timer.phase("io"):
                self.store.save(step, self.offsets, {"V": v_local}, meta=meta)
            self.last_save = time.monotonic()
        if stop:
            raise Checkpointed(f"stopped by signal at step {step}" + (", checkpoint written" if self.store else ""),
                               saved=self.store is not None)
