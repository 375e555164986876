"""Gradient averaging across replicas: one fused Allreduce, or an overlapped Iallreduce.

Both keep every replica bit-identical: all ranks apply the same averaged gradients
in the same order. ``check_replicas`` proves it periodically.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from typing import Any, Iterator

import numpy as np
from mpi4py import MPI
from torch import nn

from hpcql.dqn.network import param_checksum
from hpcql.timing import PhaseTimer


class SyncAllreduce:
    """Average a flat gradient with one blocking ``Allreduce`` (timed as ``exchange``).

    Every call's duration is kept (8 bytes per update): a rank's time in a blocking
    Allreduce is the transfer itself plus waiting for the last replica to arrive, and
    the last one to arrive waits for nobody. ``transfer_seconds`` sums, over the calls,
    the shortest time any rank spent in it: the communication proper, without the skew.
    """

    def __init__(self, comm: MPI.Comm, timer: PhaseTimer) -> None:
        self.comm, self.timer = comm, timer
        self.staleness: list[int] = []
        self.calls = array("d")

    def average(self, flat: np.ndarray) -> np.ndarray:
        if self.comm.size > 1:
            t0 = time.perf_counter()
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            flat /= self.comm.size
            dt = time.perf_counter() - t0
            self.timer.add("exchange", dt)
            self.calls.append(dt)
        return flat

    def transfer_seconds(self) -> float:
        """Sum over calls of the minimum time over ranks (collective; every rank made the same calls)."""
        local = np.frombuffer(self.calls, dtype=np.float64) if len(self.calls) else np.zeros(0)
        low = np.empty_like(local)
        self.comm.Allreduce(local, low, op=MPI.MIN)
        return float(low.sum())


class OverlapAllreduce:
    """Non-blocking ``Iallreduce`` started right after backward, completed only when needed.

    The averaged gradient of update ``t`` is applied just before update
    ``t + max_staleness`` computes its own, so acting and learning overlap the
    reduction; ``staleness`` records how many updates late each one was applied.
    Requests are tested on every env step to drive MPI progress.
    """

    def __init__(self, comm: MPI.Comm, timer: PhaseTimer, size: int, max_staleness: int) -> None:
        self.comm, self.timer, self.max_staleness = comm, timer, max_staleness
        self.pool = [np.zeros(size, dtype=np.float32) for _ in range(max_staleness + 1)]
        self.pending: deque[tuple[MPI.Request, np.ndarray, int]] = deque()
        self.staleness: list[int] = []
        self.blocked = 0  # completions that had to wait (the reduction was not done yet)

    def start(self, flat: np.ndarray, applied: int) -> None:
        """Start averaging ``flat`` (copied); ``applied`` = updates applied when it was computed."""
        buf = self.pool.pop()
        buf[...] = flat
        t0 = time.perf_counter()
        req = self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM) if self.comm.size > 1 else MPI.REQUEST_NULL
        self.timer.add("exchange", time.perf_counter() - t0)
        self.pending.append((req, buf, applied))

    def poll(self) -> None:
        """Let MPI progress the pending reductions (cheap)."""
        for req, _, _ in self.pending:
            if req != MPI.REQUEST_NULL:
                req.Test()

    def ready(self, applied: int, flush: bool = False) -> Iterator[np.ndarray]:
        """Yield the averaged gradients due now (all of them when ``flush``); oldest first."""
        while self.pending and (flush or len(self.pending) > self.max_staleness):
            req, buf, at = self.pending.popleft()
            t0 = time.perf_counter()
            if req != MPI.REQUEST_NULL and not req.Test():
                self.blocked += 1
                req.Wait()
            self.timer.add("wait", time.perf_counter() - t0)
            buf /= self.comm.size
            self.staleness.append(applied - at)
            yield buf
            self.pool.append(buf)
            applied += 1

    def state_dict(self) -> dict[str, Any]:
        """Completes the pending reductions (collective; every rank holds the same ones)."""
        grads, at = [], []
        for req, buf, a in self.pending:
            if req != MPI.REQUEST_NULL:
                req.Wait()
            grads.append(buf.copy())
            at.append(a)
        self.pending = deque((MPI.REQUEST_NULL, b, a) for b, a in zip(grads, at))
        return {"grads": grads, "applied_at": at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = deque()
        for g, a in zip(state["grads"], state["applied_at"]):
            buf = self.pool.pop()
            buf[...] = g
            self.pending.append((MPI.REQUEST_NULL, buf, int(a)))


def check_replicas(comm: MPI.Comm, module: nn.Module, update: int) -> None:
    """Raise ``RuntimeError`` on every rank when the replicas are not bit-identical (collective)."""
    sums = comm.allgather(param_checksum(module))
    bad = [r for r, s in enumerate(sums) if s[1] != sums[0][1]]
    if bad:
        detail = ", ".join(f"rank {r}: sum {sums[r][0]:.17g}" for r in [0] + bad)
        raise RuntimeError(f"replicas diverged at update {update}: rank(s) {bad} differ from rank 0 "
                           f"(parameter checksums; {detail})")
