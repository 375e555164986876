"""Checkpoint / resume for the Q-learning engine (periodic and on SIGTERM / SIGUSR1).

The learning loops fold two local flags, "checkpoint due" and "stop signal",
into the counter reduction they already do (the sync ``Allreduce`` each round,
the async ``Iallreduce`` chain), so every rank learns about them from the same
reduction and no extra message is needed. Then ``after`` writes one checkpoint
(collective) and, on a signal, raises ``Checkpointed`` (exit 3, requeue).

A checkpoint (engine ``q-learning``) holds

- ``Q`` and ``visits`` as row-sharded datasets: any partition re-reads its rows;
- ``v_pi`` (row-sharded): the evaluator's warm start for its next policy evaluation;
- per rank: ``agents`` (packed records in this rank's array order), ``stats``
  (update / |TD| / restart / migration counters) and ``counters`` (received,
  rounds); rank 0 also stores the metric rows and ``metric_window`` (where the
  next row's window starts);
- meta: step, mode, the agreed global totals, the global agent count, the
  evaluation cursor and elapsed time, and the load-balance recut count.

Checkpoints written before ``v_pi``, ``metric_window`` and ``rebalances`` existed
still resume: the warm start is zero, the window starts at the checkpoint and the
recut count at 0, so only those metrics may differ from an uninterrupted run.

Ghost max-Q values are not stored: after every sync round they equal the
neighbours' row maxima, which the first halo exchange of a resumed run
recomputes. ``visits_mark`` (the load-balance window's start) is stored; with the
same rank count a resumed run first moves to the partition the checkpoint was
written under (load balancing may have recut it), so the resumed sync run is
bitwise the run that was never interrupted. Under another rank count each new rank reads every
old rank's agent records and keeps the agents whose state it owns (the global
agent count is preserved); the cumulative counters move to rank 0.
"""

from __future__ import annotations

import time
from typing import Any

import h5py
import numpy as np
from mpi4py import MPI

from hpcql import signals
from hpcql.checkpoint import Checkpoint, Checkpointed, CheckpointStore
from hpcql.comm import collective
from hpcql.config import Config
from hpcql.console import Console
from hpcql.qlearning.agents import RECORD, Agents
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner
from hpcql.qlearning.monitor import Monitor
from hpcql.qlearning.rebalance import Rebalancer
from hpcql.timing import PhaseTimer

ENGINE = "q-learning"
NUM_FLAGS = 2  # checkpoint due, stop signal: appended to the reduced totals


class QLearningControl:
    """Checkpoint triggers and the checkpoint to resume from, for one Q-learning run."""

    def __init__(self, cfg: Config, comm: MPI.Comm, console: Console, timer: PhaseTimer) -> None:
        self.section = cfg.checkpoint
        self.comm = comm
        self.console = console
        self.timer = timer
        self.mode = cfg.algo.mode
        store = CheckpointStore(comm, cfg, engine=ENGINE)
        self.to_clear = store if self.section.fresh else None
        """``--fresh``: cleared by ``clear_if_fresh`` once every input is checked, not before."""
        resume = self.section.enabled and not self.section.fresh
        self.resumed: Checkpoint | None = store.latest(console.warn) if resume else None
        self.store = store if self.section.enabled else None
        if self.resumed is not None:
            console.info(f"resuming from {self.resumed.path} (step {self.resumed.step}, written by "
                         f"{self.resumed.ranks} rank(s))")
        self.step = self.resumed.step if self.resumed else 0
        """Agreed step counter: sync rounds, or completed budget reductions in async mode."""
        self.last_save_time = time.monotonic()
        self.last_save_step = self.step
        self.evaluator: Evaluator | None = None
        self.rebalancer: Rebalancer | None = None

    def clear_if_fresh(self) -> None:
        """``--fresh``: delete the old checkpoints, once the whole config has been checked (collective)."""
        if self.to_clear is not None:
            self.to_clear.clear()
            self.to_clear = None

    # ------------------------------------------------------------------ resume
    def resume_offsets(self) -> np.ndarray | None:
        """The partition the resumed checkpoint was written under, when it had this rank count."""
        ck = self.resumed
        if ck is None or ck.ranks != self.comm.size:
            return None
        return ck.offsets()

    def restore_learner(self, learner: Learner) -> None:
        """Load the resumed Q, visits, agents and counters into ``learner`` (collective)."""
        ck = self.resumed
        if ck is not None:
            sh = learner.problem.shard
            mine = (sh.row_start, sh.row_stop)
            collective(self.comm, lambda: ck.require("Q", (sh.num_states, sh.num_actions), finite_rows=mine))
            restore_learner(learner, ck)

    def attach(self, evaluator: Evaluator | None, rebalancer: Rebalancer | None) -> None:
        """Restore the evaluator's warm start and the recut count, and save them from now on (collective)."""
        self.evaluator, self.rebalancer = evaluator, rebalancer
        ck = self.resumed
        if ck is None:
            return
        if evaluator is not None and ck.has("v_pi"):
            sh = evaluator.problem.shard
            evaluator.v_pi[...] = ck.rows("v_pi", sh.row_start, sh.row_stop)
        if rebalancer is not None:
            rebalancer.count = int(ck.meta.get("rebalances", 0))

    def restore_monitor(self, monitor: Monitor) -> np.ndarray | None:
        """Carry the monitor on from the checkpoint; returns the agreed totals then (or None)."""
        ck = self.resumed
        if ck is None:
            return None
        meta = ck.meta
        totals = np.asarray(meta["totals"], dtype=np.float64)
        monitor.load_state(meta["monitor"], totals, self._rank0("metric_rows"), self._rank0("metric_window"))
        return totals

    def _rank0(self, name: str) -> np.ndarray | None:
        """Rank 0's per-rank dataset ``name`` of the resumed checkpoint, on rank 0 when present (else None)."""
        ck = self.resumed
        if ck is None or self.comm.rank != 0 or not ck.has_per_rank(name, 0):
            return None
        return ck.per_rank(name, 0)

    # ------------------------------------------------------------------ triggers
    def flags(self) -> np.ndarray:
        """Local (checkpoint due, stop signal) as 0/1, to be sum-reduced with the totals."""
        stop = float(signals.requested())
        if self.store is None:
            return np.array([0.0, stop])
        s = self.section
        due = (s.every_iterations > 0 and self.step + 1 - self.last_save_step >= s.every_iterations) or (
            s.every_seconds > 0 and time.monotonic() - self.last_save_time >= s.every_seconds)
        return np.array([float(due), stop])

    def after(self, glob_flags: np.ndarray, learner: Learner, monitor: Monitor, totals: np.ndarray,
              before_save=None) -> None:
        """With the agreed flags of step ``self.step``: save when due or stopping, raise on a stop (collective).

        ``before_save`` (async mode) brings every agent and ghost value in flight home first.
        """
        due, stop = bool(glob_flags[0] > 0), bool(glob_flags[1] > 0)
        if (due or stop) and before_save is not None:
            before_save()
        if self.store is not None and (due or stop):
            with self.timer.phase("io"):
                self.save(learner, monitor, totals)
        if stop:
            raise Checkpointed(f"stopped by signal at step {self.step}"
                               + (", checkpoint written" if self.store else ""), saved=self.store is not None)

    def save(self, learner: Learner, monitor: Monitor, totals: np.ndarray) -> None:
        """One checkpoint of the whole learning state (collective)."""
        assert self.store is not None
        a = learner.agents
        per_rank = {
            "agents": a.pack().reshape(-1, RECORD),
            "stats": learner.stats.copy(),
            "counters": np.array([learner.received, learner.rounds], dtype=np.int64),
        }
        rows = monitor.rows_array()
        if self.comm.rank == 0:
            per_rank["metric_window"] = monitor.window()
            if rows is not None:
                per_rank["metric_rows"] = rows
        meta: dict[str, Any] = {
            "step": self.step,
            "mode": self.mode,
            "totals": [float(x) for x in totals],
            "total_agents": int(learner.total_agents),
            "monitor": monitor.state(totals),
            "rebalances": self.rebalancer.count if self.rebalancer is not None else 0,
        }
        sharded = {"Q": learner.q, "visits": learner.visits, "visits_mark": learner.visits_mark}
        if self.evaluator is not None:
            sharded["v_pi"] = self.evaluator.v_pi
        self.store.save(self.step, learner.problem.offsets, sharded, per_rank=per_rank, meta=meta)
        self.last_save_time = time.monotonic()
        self.last_save_step = self.step


def restore_learner(learner: Learner, ck: Checkpoint) -> None:
    """Q / visit rows of this rank's shard, and the agents whose state it owns (any old rank count)."""
    comm = learner.problem.comm
    sh = learner.problem.shard
    learner.q[...] = ck.rows("Q", sh.row_start, sh.row_stop)
    learner.visits[...] = ck.rows("visits", sh.row_start, sh.row_stop)
    if ck.has("visits_mark"):  # written since load balancing came in
        learner.visits_mark[...] = ck.rows("visits_mark", sh.row_start, sh.row_stop)
    learner.refresh_local_max()
    learner.total_agents = int(ck.meta["total_agents"])
    if ck.ranks == comm.size:
        learner.agents = Agents.unpack(ck.per_rank("agents", comm.rank))
        learner.stats[...] = ck.per_rank("stats", comm.rank)
        learner.received, learner.rounds = (int(x) for x in ck.per_rank("counters", comm.rank))
        return
    # another rank count: every rank scans all old ranks' agents and keeps its own (old-rank order)
    kept = []
    stats = np.zeros_like(learner.stats)
    received, rounds = 0, 0
    with h5py.File(ck.path, "r") as f:
        for r in range(ck.ranks):
            rec = np.asarray(f[f"per_rank/{r}/agents"][()], dtype=np.int64).reshape(-1, RECORD)
            state = rec[:, 1]
            mine = (state >= sh.row_start) & (state < sh.row_stop)
            mine |= (state < 0) & (r % comm.size == comm.rank)  # not placed yet: any rank will do
            kept.append(rec[mine])
            stats += np.asarray(f[f"per_rank/{r}/stats"][()])
            ctr = np.asarray(f[f"per_rank/{r}/counters"][()])
            received += int(ctr[0])
            rounds = max(rounds, int(ctr[1]))
    learner.agents = Agents.unpack(np.concatenate(kept))
    # cumulative counters are global sums: keep them on rank 0 so the reduced totals carry on
    if comm.rank == 0:
        learner.stats[...] = stats
        learner.received = received
    else:
        learner.stats[...] = 0.0
        learner.received = 0
    learner.rounds = rounds
    held = comm.allreduce(len(learner.agents), op=MPI.SUM)
    if held != learner.total_agents:
        raise RuntimeError(f"{ck.path}: {held} agents after redistribution, checkpoint says {learner.total_agents}")


__all__ = ["QLearningControl", "NUM_FLAGS", "restore_learner"]
