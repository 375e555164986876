"""Synchronous mode: lockstep rounds, bitwise deterministic for a seed and rank count.

A round: every agent takes up to ``exchange_every`` steps (migrants stop early),
migrants go to their owners in one ``Alltoallv`` (arrivals appended in source-rank
order), ghost max-Q values are refreshed with the halo plan, and one ``Allreduce``
of the counters gives every rank the same budget / evaluation decisions.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.faults import FaultInjector
from hpcql.qlearning.agents import RECORD
from hpcql.qlearning.control import NUM_FLAGS, QLearningControl
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner
from hpcql.qlearning.monitor import Monitor
from hpcql.timing import PhaseTimer


def _displs(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def exchange_agents(comm: MPI.Comm, records: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Send each rank its migrant records (sorted by destination); returns arrivals (collective)."""
    recv_counts = np.zeros(comm.size, dtype=np.int64)
    comm.Alltoall(counts, recv_counts)
    recv = np.empty((int(recv_counts.sum()), RECORD), dtype=np.int64)
    send = np.ascontiguousarray(records, dtype=np.int64)
    comm.Alltoallv([send, counts * RECORD, _displs(counts) * RECORD, MPI.INT64_T],
                   [recv, recv_counts * RECORD, _displs(recv_counts) * RECORD, MPI.INT64_T])
    return recv


def run_sync(learner: Learner, monitor: Monitor, evaluator: Evaluator | None, timer: PhaseTimer,
             faults: FaultInjector, control: QLearningControl | None = None,
             start_totals: np.ndarray | None = None) -> np.ndarray:
    """Learn until the budget is used; returns the final reduced totals.

    ``control`` adds checkpoint / stop-signal flags to the round's reduction and
    saves (or stops) at the end of a round; ``start_totals`` are the agreed totals
    of the checkpoint this run resumes from.
    """
    problem = learner.problem
    comm = problem.comm
    steps = learner.algo.exchange_every
    with timer.phase("exchange"):
        problem.halo.exchange(learner.vmax_ext)
    n_tot = len(monitor.local_totals(learner.counters(), 0))
    local = np.zeros(n_tot + NUM_FLAGS)
    glob = np.zeros_like(local)
    totals = glob[:n_tot]
    progress = monitor.progress(start_totals) if start_totals is not None else 0.0
    it = control.step if control is not None else 0
    while True:
        faults.tick(it)
        it += 1
        with timer.phase("compute"):
            records, counts = learner.advance(steps, monitor.epsilon_for(progress))
        with timer.phase("exchange"):
            learner.receive(exchange_agents(comm, records, counts))
            learner.refresh_local_max()
            problem.halo.exchange(learner.vmax_ext)
        with timer.phase("reduce"):
            local[:n_tot] = monitor.local_totals(learner.counters(), len(learner.agents))
            local[n_tot:] = control.flags() if control is not None else 0.0
            comm.Allreduce(local, glob, op=MPI.SUM)
        monitor.check_agents(totals, learner.total_agents)
        progress = monitor.progress(totals)
        stop = monitor.should_stop(totals)
        evaluation = evaluator.evaluate(learner.q) if evaluator is not None and monitor.eval_due(totals) else None
        monitor.record(totals, evaluation)
        if stop:
            return totals.copy()
        if control is not None:
            control.step = it
            control.after(glob[n_tot:], learner, monitor, totals)
