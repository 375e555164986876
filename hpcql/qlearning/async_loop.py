"""Asynchronous mode: no rank waits for another.

Migrants and boundary max-Q values go out with non-blocking sends as soon as a
batch of steps is done; whatever has arrived is used. Budget decisions come from
a chain of non-blocking ``Iallreduce`` of the counters: a rank starts the next
one only after the previous completed, so every rank sees the same sequence of
totals and stops after the same one. Then in-flight messages are drained until
the global sent and received counts agree (no agent lost or duplicated).
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcql.comm import allreduce_yielding
from hpcql.faults import FaultInjector
from hpcql.halo import HaloExchange
from hpcql.qlearning.agents import RECORD
from hpcql.qlearning.control import NUM_FLAGS, QLearningControl
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner
from hpcql.qlearning.monitor import T, Monitor
from hpcql.qlearning.rebalance import Rebalancer
from hpcql.timing import PhaseTimer

TAG_AGENTS = 41
TAG_GHOSTS = 42


class AsyncChannels:
    """Non-blocking agent and ghost-value traffic on a private duplicate of ``comm``."""

    def __init__(self, comm: MPI.Comm, halo: HaloExchange) -> None:
        self.comm = comm.Dup()
        self.halo = halo
        self.pending: list[tuple[MPI.Request, np.ndarray]] = []
        self.ghost_req: dict[int, MPI.Request] = {}
        self.ghost_buf = {r: np.empty(halo.send_idx[r].size) for r in halo.destinations}
        self.ghost_in = {r: np.empty(sl.stop - sl.start) for r, sl in halo.recv_slices.items()}
        self.ghost_sent = 0
        self.ghost_recv = 0
        self.status = MPI.Status()

    def send_agents(self, records: np.ndarray, counts: np.ndarray) -> None:
        start = 0
        for dest in np.flatnonzero(counts):
            n = int(counts[dest])
            buf = np.ascontiguousarray(records[start: start + n])
            start += n
            self.pending.append((self.comm.Isend([buf, MPI.INT64_T], dest=int(dest), tag=TAG_AGENTS), buf))

    def recv_agents(self) -> np.ndarray:
        parts = []
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_AGENTS, status=self.status):
            n = self.status.Get_count(MPI.INT64_T)
            buf = np.empty(n, dtype=np.int64)
            self.comm.Recv([buf, MPI.INT64_T], source=self.status.Get_source(), tag=TAG_AGENTS)
            parts.append(buf.reshape(-1, RECORD))
        return np.concatenate(parts) if parts else np.empty((0, RECORD), dtype=np.int64)

    def send_ghosts(self, vmax_ext: np.ndarray) -> None:
        """Send boundary values to every neighbour whose previous message has gone."""
        for dest in self.halo.destinations:
            req = self.ghost_req.get(dest)
            if req is not None and not req.Test():
                continue
            np.take(vmax_ext, self.halo.send_idx[dest], out=self.ghost_buf[dest])
            self.ghost_req[dest] = self.comm.Isend(self.ghost_buf[dest], dest=dest, tag=TAG_GHOSTS)
            self.ghost_sent += 1

    def recv_ghosts(self, vmax_ext: np.ndarray) -> None:
        """Copy in whatever boundary values have arrived (the newest wins)."""
        for src, sl in self.halo.recv_slices.items():
            buf = self.ghost_in[src]
            while self.comm.Iprobe(source=src, tag=TAG_GHOSTS):
                self.comm.Recv(buf, source=src, tag=TAG_GHOSTS)
                vmax_ext[sl] = buf
                self.ghost_recv += 1

    def prune(self) -> None:
        self.pending = [(r, b) for r, b in self.pending if not r.Test()]

    def drain(self, learner: Learner) -> None:
        """After the agreed stop: receive until every sent agent and value arrived (collective)."""
        local = np.zeros(4)
        glob = np.zeros(4)
        while True:
            learner.receive(self.recv_agents())
            self.recv_ghosts(learner.vmax_ext)
            local[:] = (learner.counters()[3], learner.received, self.ghost_sent, self.ghost_recv)
            allreduce_yielding(self.comm, local, glob)
            if glob[0] == glob[1] and glob[2] == glob[3]:
                break
        MPI.Request.Waitall([r for r, _ in self.pending] + list(self.ghost_req.values()))
        self.pending = []
        self.ghost_req = {}

    def free(self) -> None:
        self.comm.Free()


def steps_per_agent(exchange_every: int, agents_per_rank: int, local_agents: int) -> int:
    """Steps each local agent may take this iteration: a work quantum of about
    ``exchange_every * agents_per_rank`` updates, whatever the rank holds right now.

    Without it a rank that holds few agents runs short iterations whose MPI calls cost more
    than their updates. In async mode, agents crossing a shard boundary in either direction
    go at rates set by each rank's throughput, not by its agent count, so the split of the
    agents between ranks drifts freely (a 2-rank random walk sat at 20 of 2048 agents for
    hundreds of iterations); the quantum keeps such a rank busy instead of mostly exchanging.
    """
    if local_agents >= agents_per_rank:
        return exchange_every
    return -(-exchange_every * agents_per_rank // max(local_agents, 1))


def run_async(learner: Learner, monitor: Monitor, evaluator: Evaluator | None, timer: PhaseTimer,
              faults: FaultInjector, control: QLearningControl | None = None,
              start_totals: np.ndarray | None = None, rebalancer: Rebalancer | None = None) -> np.ndarray:
    """Learn until the agreed budget is used; returns the final reduced totals.

    Checkpoint / stop-signal flags ride on the ``Iallreduce`` chain; when a
    completed reduction says so, every rank drains the agents and ghost values in
    flight (so each agent is held by exactly one rank), saves, and goes on or stops.
    A load-balance check (``rebalancer``, every so many completed reductions) drains
    the same way first, and is the only other point where ranks wait for each other.
    """
    comm = learner.problem.comm
    steps = learner.algo.exchange_every
    with timer.phase("exchange"):
        learner.problem.halo.exchange(learner.vmax_ext)
    ch = AsyncChannels(comm, learner.problem.halo)
    n_tot = len(monitor.local_totals(learner.counters(), len(learner.agents)))
    local = np.zeros(n_tot + NUM_FLAGS)
    glob = np.zeros_like(local)
    totals = glob[:n_tot]
    if start_totals is not None:
        totals[:] = start_totals
    reduction: MPI.Request | None = None
    agreed_updates, updates_then = float(totals[T["updates"]]), learner.updates
    size = comm.size
    it = control.step if control is not None else 0
    agreed_step = it  # completed reductions (control.step when checkpointing)
    try:
        while True:
            faults.tick(it)
            it += 1
            with timer.phase("compute"):
                if len(learner.agents):
                    est = agreed_updates + (learner.updates - updates_then) * size
                    progress = monitor.progress(np.where(np.arange(len(totals)) == T["updates"], est, totals))
                    records, counts = learner.advance(steps_per_agent(steps, learner.algo.agents_per_rank,
                                                                      len(learner.agents)),
                                                      monitor.epsilon_for(progress))
                else:
                    records, counts = None, None
            with timer.phase("exchange"):
                if records is not None:
                    ch.send_agents(records, counts)
                learner.receive(ch.recv_agents())
                learner.refresh_local_max()
                ch.send_ghosts(learner.vmax_ext)
                ch.recv_ghosts(learner.vmax_ext)
                ch.prune()
            if records is None:
                with timer.phase("wait"):
                    time.sleep(2e-4)  # nothing to do here now: do not spin against the other ranks
            with timer.phase("reduce"):
                if reduction is None:
                    local[:n_tot] = monitor.local_totals(learner.counters(), len(learner.agents))
                    local[n_tot:] = control.flags() if control is not None else 0.0
                    updates_then = learner.updates
                    reduction = ch.comm.Iallreduce(local, glob, op=MPI.SUM)
                elif reduction.Test():
                    reduction = None
                    agreed_updates = float(totals[T["updates"]])
                    monitor.check_agents(totals, learner.total_agents)
                    stop = monitor.should_stop(totals)
                    due = evaluator is not None and monitor.eval_due(totals)
                    monitor.record(totals, evaluator.evaluate(learner.q) if due else None)
                    if stop:
                        break
                    agreed_step += 1
                    balance = rebalancer is not None and rebalancer.due(comm, agreed_step)
                    flagged = control is not None and bool(glob[n_tot:].any())
                    if balance or flagged:
                        with timer.phase("wait"):
                            ch.drain(learner)
                    if balance:
                        with timer.phase("exchange"):
                            if rebalancer.run(learner, evaluator):
                                ch.free()
                                ch = AsyncChannels(comm, learner.problem.halo)
                    if control is not None:
                        control.step = agreed_step
                        if flagged:
                            control.after(glob[n_tot:].copy(), learner, monitor, totals.copy())
        with timer.phase("wait"):
            ch.drain(learner)
        with timer.phase("reduce"):
            comm.Allreduce(monitor.local_totals(learner.counters(), len(learner.agents)), totals, op=MPI.SUM)
        totals = totals.copy()
        monitor.check_agents(totals, learner.total_agents)
        if int(totals[T["moved"]]) != int(totals[T["received"]]):
            raise RuntimeError("agents still in flight after the drain")
        return totals
    finally:
        ch.free()
