"""Synchronous mode: lockstep rounds, bitwise deterministic for a seed and rank count.

A round: every agent takes up to ``exchange_every`` steps (migrants stop early),
migrants go to their owners in one ``Alltoallv`` (arrivals appended in source-rank
order), ghost max-Q values are refreshed with the halo plan, and one ``Allreduce``
of the counters gives every rank the same budget / evaluation decisions.
"""

from __future__ import annotations

import numpy as np

from hpcql.comm import allreduce_yielding
from hpcql.faults import FaultInjector
from hpcql.qlearning.agents import exchange_agents
from hpcql.qlearning.control import NUM_FLAGS, QLearningControl
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner
from hpcql.qlearning.monitor import Monitor
from hpcql.qlearning.rebalance import Rebalancer
from hpcql.timing import PhaseTimer


def run_sync(learner: Learner, monitor: Monitor, evaluator: Evaluator | None, timer: PhaseTimer,
             faults: FaultInjector, control: QLearningControl | None = None,
             start_totals: np.ndarray | None = None, rebalancer: Rebalancer | None = None) -> np.ndarray:
    """Learn until the budget is used; returns the final reduced totals.

    ``control`` adds checkpoint / stop-signal flags to the round's reduction and
    saves (or stops) at the end of a round; ``start_totals`` are the agreed totals
    of the checkpoint this run resumes from. ``rebalancer`` may recut the partition
    at the end of a round (before a checkpoint of that round, so a resumed run
    starts on the partition it saved).
    """
    comm = learner.problem.comm
    steps = learner.algo.exchange_every
    with timer.phase("exchange"):
        learner.problem.halo.exchange(learner.vmax_ext)
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
            learner.problem.halo.exchange(learner.vmax_ext)
        with timer.phase("reduce"):
            local[:n_tot] = monitor.local_totals(learner.counters(), len(learner.agents))
            local[n_tot:] = control.flags() if control is not None else 0.0
            allreduce_yielding(comm, local, glob)
        monitor.check_agents(totals, learner.total_agents)
        progress = monitor.progress(totals)
        stop = monitor.should_stop(totals)
        evaluation = evaluator.evaluate(learner.q) if evaluator is not None and monitor.eval_due(totals) else None
        monitor.record(totals, evaluation)
        if stop:
            return totals.copy()
        if rebalancer is not None and rebalancer.due(comm, it):
            with timer.phase("exchange"):
                rebalancer.run(learner, evaluator)
        if control is not None:
            control.step = it
            control.after(glob[n_tot:], learner, monitor, totals)
