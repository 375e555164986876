"""Asynchronous (Gauss-Seidel, non-blocking) value iteration.

Each rank sweeps its shard in place (alternating forward and backward), sends its boundary values to the ranks
that need them whenever they changed (at most one message in flight per
neighbour), takes whatever has arrived, and never waits for a particular
neighbour. A rank whose last sweep moved no value by the threshold, with no
news since, is idle; ``TerminationDetector`` decides when every rank is idle
and no message is in flight. The fixed point is the sync solver's.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcql.console import ProgressTracker
from hpcql.faults import FaultInjector
from hpcql.tabular.control import RunControl
from hpcql.tabular.problem import ShardedProblem
from hpcql.tabular.solution import Solution
from hpcql.tabular.termination import TerminationDetector
from hpcql.timing import PhaseTimer

TAG_HALO = 71
IDLE_SLEEP = 2e-4  # seconds; idle ranks yield the core (ranks may be oversubscribed)


class AsyncHalo:
    """Per-neighbour non-blocking ghost traffic on top of a ``HaloExchange`` plan."""

    def __init__(self, problem: ShardedProblem, detector: TerminationDetector, send_tol: float) -> None:
        self.comm = problem.comm
        self.halo = problem.halo
        self.detector = detector
        self.recv_bufs = {s: np.empty(int(c)) for s, c in zip(self.halo.sources, self.halo.recv_counts)}
        self.recv_reqs = {s: self.comm.Irecv(self.recv_bufs[s], source=s, tag=TAG_HALO) for s in self.halo.sources}
        self.send_bufs = {d: np.empty(self.halo.send_idx[d].size) for d in self.halo.destinations}
        self.send_reqs: dict[int, MPI.Request] = {}
        self.last_sent = {d: np.full(self.halo.send_idx[d].size, np.nan) for d in self.halo.destinations}
        self.pending: set[int] = set(self.halo.destinations)
        self.send_tol = send_tol

    def receive(self, v_ext: np.ndarray) -> bool:
        """Copy every message that has arrived into the ghosts; True if any did."""
        got = False
        for src, req in self.recv_reqs.items():
            while req.Test():
                v_ext[self.halo.recv_slices[src]] = self.recv_bufs[src]
                self.detector.received += 1
                got = True
                req = self.comm.Irecv(self.recv_bufs[src], source=src, tag=TAG_HALO)
                self.recv_reqs[src] = req
        return got

    def mark_changed(self, v_ext: np.ndarray) -> None:
        """Queue a send to every neighbour whose boundary values moved by more than ``send_tol``
        since they were last sent (never-sent values count as moved)."""
        for dst in self.halo.destinations:
            moved = np.abs(v_ext[self.halo.send_idx[dst]] - self.last_sent[dst])
            if moved.size and not np.max(moved) <= self.send_tol:  # NaN (never sent) counts as moved
                self.pending.add(dst)

    def flush(self, v_ext: np.ndarray) -> None:
        """Send pending boundary values where the previous send has completed."""
        for dst in list(self.pending):
            req = self.send_reqs.get(dst)
            if req is not None and not req.Test():
                continue
            buf = self.send_bufs[dst]
            np.take(v_ext, self.halo.send_idx[dst], out=buf)
            self.last_sent[dst][:] = buf
            self.send_reqs[dst] = self.comm.Isend(buf, dest=dst, tag=TAG_HALO)
            self.detector.sent += 1
            self.pending.discard(dst)

    def drain(self, v_ext: np.ndarray) -> None:
        """Stop early (signal): keep receiving until every rank's sends are complete."""
        barrier: MPI.Request | None = None
        while True:
            self.receive(v_ext)
            if barrier is None and all(r.Test() for r in self.send_reqs.values()):
                barrier = self.comm.Ibarrier()
            if barrier is not None and barrier.Test():
                return
            time.sleep(IDLE_SLEEP)

    def close(self) -> None:
        """Complete sends and cancel the posted receives (nothing is in flight at termination)."""
        MPI.Request.Waitall(list(self.send_reqs.values()))
        for req in self.recv_reqs.values():
            req.Cancel()
        MPI.Request.Waitall(list(self.recv_reqs.values()))


def bellman_residual(problem: ShardedProblem, v_local: np.ndarray) -> float:
    """Global ||T V - V||_inf of a sharded V (one sync exchange, collective)."""
    v_ext = problem.new_ext()
    v_ext[: problem.n_local] = v_local
    problem.halo.exchange(v_ext)
    scratch = np.empty(problem.n_local)
    policy = np.empty(problem.n_local, dtype=np.int64)
    local = problem.sweep(v_ext, scratch, policy)
    return float(problem.comm.allreduce(local, op=MPI.MAX))


def value_iteration_async(
    problem: ShardedProblem,
    tol: float,
    max_iterations: int,
    timer: PhaseTimer,
    tracker: ProgressTracker,
    faults: FaultInjector,
    control: RunControl,
) -> Solution:
    """Asynchronous Gauss-Seidel VI with distributed termination detection.

    Checkpoints hold V only (any V is a valid start: the iteration converges
    to the same fixed point); checkpoint and stop requests ride on the waves.
    """
    comm, sh = problem.comm, problem.shard
    n = problem.n_local
    threshold = problem.stop_threshold(tol)
    # A rank goes idle below 0.8 of the threshold, and neighbours may hold its boundary values up
    # to 0.2 of it stale, so at the stop ||T V - V|| <= gamma * threshold (see bellman_residual).
    local_threshold, send_tol = 0.8 * threshold, 0.2 * threshold
    v_ext = problem.new_ext()
    v0 = control.initial_values(sh.row_start, sh.row_stop)
    if v0 is not None:
        v_ext[:n] = v0
    policy = np.zeros(n, dtype=np.int64)
    detector = TerminationDetector(comm)
    traffic = AsyncHalo(problem, detector, send_tol)
    sweeps, loops = 0, 0
    active = True
    residual = np.inf
    while True:
        faults.tick(loops)
        loops += 1
        with timer.phase("exchange"):
            news = traffic.receive(v_ext)
        if (active or news) and sweeps < max_iterations:
            with timer.phase("compute"):
                residual = problem.sweep(v_ext, v_ext, policy, sweeps % 2 == 1)
            sweeps += 1
            active = residual >= local_threshold
            if active or news:
                detector.mark_busy()
            traffic.mark_changed(v_ext)
            tracker.update(sweeps, residual)
        else:
            active = False
        with timer.phase("exchange"):
            traffic.flush(v_ext)
        with timer.phase("reduce"):
            due, stop = control.flags(control.start_step + detector.waves + 1)
            if detector.poll(busy_now=active or bool(traffic.pending), due=bool(due), stop=bool(stop)):
                break
        if detector.stop_requested:
            traffic.drain(v_ext)
            traffic.close()
        if detector.checkpoint_due or detector.stop_requested:
            control.after(control.start_step + detector.waves, True, detector.stop_requested, v_ext[:n], {})
        if not active and not news:
            t0 = time.perf_counter()
            time.sleep(IDLE_SLEEP)
            timer.add("wait", time.perf_counter() - t0)
    traffic.close()
    total_sweeps = int(comm.allreduce(sweeps, op=MPI.SUM))
    max_sweeps = int(comm.allreduce(sweeps, op=MPI.MAX))
    final = bellman_residual(problem, v_ext[:n])
    converged = final <= threshold and max_sweeps < max_iterations
    return Solution(v_ext[:n].copy(), max_sweeps, final, converged,
                    extra={"sweeps": total_sweeps / comm.size, "total_sweeps": total_sweeps,
                           "termination_waves": detector.waves})
