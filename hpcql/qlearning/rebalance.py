"""Dynamic load balancing: move shard boundaries to where the agents do their updates.

With a fixed block partition, agents that crowd into one region (e.g. near a goal
as epsilon decays) leave the rank owning it with most of the work. Every
``rebalance_every`` agreed steps the ranks gather the number of updates each state
received since the last check (the window), and when the busiest rank did more than
``rebalance_threshold`` times the mean, the partition is recut so every block holds
an equal share of that work (``plan_partition``, pure). Q rows, visit counts, MDP
rows, agents and the evaluator's values then move to their new owners and the halo
is planned again (``Rebalancer.run``, collective). Every input of the decision is
agreed, so sync mode stays bitwise deterministic for a seed and rank count.

Assumes ranks of equal speed: the work is counted in updates, not seconds.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import displacements
from hpcql.partition import weighted_partition
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner
from hpcql.tabular.problem import repartition

FLOOR_SHARE = 0.01
"""Work added per state, as a share of the window's mean per-state work, so unvisited regions still spread."""
MIN_GAIN = 0.98
"""Recut only when the busiest block's load drops below this fraction of the current one's."""


def block_loads(cum: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pure: work per block from the cumulative per-state work ``cum`` (length S+1)."""
    return np.diff(cum[np.asarray(offsets, dtype=np.int64)])


def plan_partition(work: np.ndarray, offsets: np.ndarray, threshold: float) -> np.ndarray | None:
    """Pure: offsets that balance the per-state ``work``, or None to keep ``offsets``.

    None when the busiest block holds at most ``threshold`` times the mean load, or
    when recutting would not lower the busiest load by at least 2%. Every block of
    the new partition keeps at least one state.
    """
    size = len(offsets) - 1
    S = int(work.size)
    total = float(work.sum())
    if size < 2 or total <= 0 or S < size:
        return None
    cum = np.concatenate(([0.0], np.cumsum(work + FLOOR_SHARE * total / S, dtype=np.float64)))
    mean = cum[-1] / size
    current = block_loads(cum, offsets).max()
    if current <= threshold * mean:
        return None
    new = weighted_partition(cum, size)
    for r in range(1, size):  # no empty blocks
        new[r] = min(max(new[r], new[r - 1] + 1), S - (size - r))
    if np.array_equal(new, offsets) or block_loads(cum, new).max() > MIN_GAIN * current:
        return None
    return new


class Rebalancer:
    """Checks the load every ``every`` agreed steps and recuts the partition when it is off."""

    def __init__(self, every: int, threshold: float) -> None:
        self.every = every
        self.threshold = threshold
        self.count = 0
        """Recuts done in this run, counting those before the checkpoint it resumed from."""

    def due(self, comm: MPI.Comm, step: int) -> bool:
        """Whether agreed step ``step`` is a check point (same answer on every rank)."""
        return self.every > 0 and comm.size > 1 and step > 0 and step % self.every == 0

    def window_work(self, learner: Learner) -> np.ndarray:
        """Every state's updates since the last check, gathered on every rank (collective)."""
        comm = learner.problem.comm
        local = learner.window_work()
        counts = np.array(comm.allgather(local.size), dtype=np.int64)
        out = np.empty(int(counts.sum()), dtype=np.int64)
        comm.Allgatherv(local, [out, counts, displacements(counts), MPI.INT64_T])
        return out

    def run(self, learner: Learner, evaluator: Evaluator | None) -> bool:
        """Check the window's balance and recut if needed (collective); True when it recut."""
        work = self.window_work(learner)
        learner.reset_window()
        new_offsets = plan_partition(work, learner.problem.offsets, self.threshold)
        if new_offsets is None:
            return False
        problem, mover = repartition(learner.problem, new_offsets)
        learner.repartition(problem, mover)
        if evaluator is not None:
            evaluator.repartition(problem, mover)
        self.count += 1
        return True
