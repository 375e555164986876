"""Gradient averaging across replicas: one fused allreduce, or an overlapped one.

Both keep every replica bit-identical: all ranks apply the same averaged gradients
in the same order. ``ReplicaCheck`` proves it periodically.
"""

from __future__ import annotations

import functools
import time
from array import array
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np
from mpi4py import MPI
from torch import nn

from hpcql.comm import yield_until
from hpcql.dqn.network import param_checksum
from hpcql.timing import PhaseTimer
from hpcql.vector_allreduce import MPIAllreduce, NodeAllreduce, RowSum

Reducer = NodeAllreduce | MPIAllreduce


class SideWork:
    """Work a rank does while it waits for a reduction, one piece per test, until it returns False.

    ``between`` is what a reducer's wait runs between its tests (None when there is no work);
    ``busy`` the seconds spent in it, which ``book`` adds to ``compute`` (they are not waiting).
    """

    def __init__(self, work: Callable[[], bool] | None) -> None:
        self.work, self.busy = work, 0.0
        self.between = self._step if work is not None else None

    def _step(self) -> None:
        if self.work is None:
            return
        t = time.perf_counter()
        if not self.work():
            self.work = None
        self.busy += time.perf_counter() - t

    def book(self, timer: PhaseTimer) -> None:
        if self.busy:
            timer.add("compute", self.busy)


class SlowestRankTime:
    """Each reduction's communication seconds on this rank (8 bytes per update), kept in ``calls``.

    A rank's communication time for a reduction is what it costs itself plus the time it waits
    for the replicas behind it; the last replica to get there waits for nobody.
    ``transfer_seconds`` sums, over the reductions, the least time any rank spent: the
    communication on the critical path, without the skew between replicas.
    """

    comm: MPI.Comm
    calls: array

    def transfer_seconds(self) -> float:
        """Sum over reductions of the minimum over ranks (collective; every rank made the same ones)."""
        local = np.frombuffer(self.calls, dtype=np.float64) if len(self.calls) else np.zeros(0)
        low = np.empty_like(local)
        self.comm.Allreduce(local, low, op=MPI.MIN)
        return float(low.sum())


class SyncAllreduce(SlowestRankTime):
    """Average a flat gradient with one blocking allreduce (timed as ``exchange``) into ``out``.

    ``reducer``: a ``vector_allreduce`` (node shared memory, or MPI). ``grad_buffer``: where to
    compute the gradient so that the reducer sends it without a copy (None: anywhere).
    ``out``: where the average lands (the trainer's gradient array). Every call's duration
    is kept (``SlowestRankTime``): a rank's time in a blocking allreduce is the transfer
    itself plus waiting for the last replica to arrive.

    ``meanwhile`` (optional): work that a rank whose reduction is not complete at its first
    test does, one piece per further test until it returns False (upcoming updates'
    minibatches, ``ReplicaTrainer.prepare_batch``). On one node (shared memory) that is a rank
    that arrived before the others; with MPI it can also be one whose ``Iallreduce`` needs more
    progress. Its time counts as ``compute``, not ``exchange`` (nor in ``calls``). Every rank
    must pass ``meanwhile`` or not alike: with MPI it picks ``Iallreduce`` over ``Allreduce``.
    """

    def __init__(self, comm: MPI.Comm, timer: PhaseTimer, reducer: Reducer, out: np.ndarray) -> None:
        self.comm, self.timer, self.reducer, self.out = comm, timer, reducer, out
        self.staleness: list[int] = []
        self.calls = array("d")

    def grad_buffer(self) -> np.ndarray | None:
        """The shared-memory slot the next reduction sends (MPI's blocking ``Allreduce`` and one
        rank: None, it reduces ``out`` in place)."""
        return self.reducer.next_slot() if self.comm.size > 1 and isinstance(self.reducer, NodeAllreduce) else None

    def average(self, flat: np.ndarray, meanwhile: Callable[[], bool] | None = None) -> RowSum:
        """The average of every replica's ``flat``: ``flat`` itself at one rank; on a node, every
        replica's slot, read in place and summed by the optimizer's passes (use it before the next
        ``average``); with MPI, ``out``."""
        if self.comm.size == 1:
            return RowSum.of(flat)
        side = SideWork(meanwhile)
        t0 = time.perf_counter()
        avg = self.reducer.reduce(flat, divisor=self.comm.size, between=side.between, out=self.out)
        dt = time.perf_counter() - t0 - side.busy
        self.timer.add("exchange", dt)
        side.book(self.timer)
        self.calls.append(dt)
        return avg


class OverlapAllreduce(SlowestRankTime):
    """A reduction posted right after backward, completed only when needed.

    The averaged gradient of update ``t`` is applied just before update
    ``t + max_staleness`` computes its own, so acting and learning overlap the
    reduction; ``staleness`` records how many updates late each one was applied.
    ``poll`` (every env step, and midway through each update) lets the reducer progress.
    ``reducer``: a ``vector_allreduce`` made with ``lag = max_staleness``; the averages are handed
    over where they lie, as a ``RowSum`` (on a node every replica's slot, with MPI the request's
    buffer) that the optimizer adds up and divides in its own passes; ``out`` (the trainer's
    gradient array) only receives the reductions completed for a checkpoint or dropped. Each reduction's
    posting, waiting and handing-over seconds are kept (``SlowestRankTime``): hidden
    communication costs the slowest replica nothing but posting and handing over.
    """

    def __init__(self, comm: MPI.Comm, timer: PhaseTimer, reducer: Reducer, out: np.ndarray,
                 max_staleness: int) -> None:
        self.comm, self.timer, self.reducer, self.max_staleness = comm, timer, reducer, max_staleness
        self.out = out
        # (sequence number, or None once collected into the array; updates applied when computed;
        # array; seconds spent posting it)
        self.pending: deque[tuple[int | None, int, np.ndarray | None, float]] = deque()
        self.staleness: list[int] = []
        self.calls = array("d")
        self.blocked = 0  # completions that had to wait (the reduction was not done yet)

    def grad_buffer(self) -> np.ndarray | None:
        """The reducer's slot that ``start`` posts next (None at one rank): a gradient computed
        there is posted without a copy."""
        return self.reducer.next_slot() if self.comm.size > 1 else None

    def start(self, flat: np.ndarray, applied: int) -> None:
        """Post ``flat`` (copied unless it is ``grad_buffer()``); ``applied`` = updates applied when
        it was computed."""
        if self.comm.size == 1:  # nothing to reduce: keep the gradient itself
            self.pending.append((None, applied, flat.copy(), 0.0))
            return
        t0 = time.perf_counter()
        seq = self.reducer.post(flat)
        dt = time.perf_counter() - t0
        self.timer.add("exchange", dt)
        self.pending.append((seq, applied, None, dt))

    def poll(self) -> None:
        """Let the pending reductions progress (cheap)."""
        self.reducer.progress()

    def ready(self, applied: int, flush: bool = False,
              meanwhile: Callable[[], bool] | None = None) -> Iterator[RowSum]:
        """Yield the averaged gradients due now (all of them when ``flush``); oldest first. Each
        must be used before the generator resumes (on a node it is the slots themselves).

        ``meanwhile``: work done while a due reduction is not complete yet, as in
        ``SyncAllreduce.average`` (counted as ``compute``, not ``wait``). Timed as ``wait``: the
        time blocked until every replica's gradient is there (or, with MPI, the reduction done);
        as ``reduce``: handing it over (on a node a memory fence, with MPI nothing: the summing and
        dividing are in the optimizer's passes).
        """
        while self.pending and (flush or len(self.pending) > self.max_staleness):
            seq, at, done, posting = self.pending.popleft()
            side = SideWork(meanwhile)
            t0 = time.perf_counter()
            if done is None:
                if not self.reducer.ready(seq):  # type: ignore[arg-type]
                    self.blocked += 1
                    yield_until(functools.partial(self.reducer.ready, seq), side.between)
            t1 = time.perf_counter()
            waited = t1 - t0 - side.busy
            self.timer.add("wait", waited)
            side.book(self.timer)
            if done is None:  # complete now
                avg = self.reducer.result(seq, self.comm.size)  # type: ignore[arg-type]
            else:  # a sum restored from a checkpoint (or the gradient itself at 1 rank)
                avg = RowSum.of(done, self.comm.size)
            handing = time.perf_counter() - t1
            self.timer.add("reduce", handing)
            self.calls.append(posting + waited + handing)
            self.staleness.append(applied - at)
            yield avg
            applied += 1

    def drop(self) -> None:
        """Complete the pending reductions and forget them (collective)."""
        for seq, _, done, _ in self.pending:
            if done is None:
                self.reducer.collect(seq, self.out)  # type: ignore[arg-type]
        self.pending.clear()

    def state_dict(self) -> dict[str, Any]:
        """Completes the pending reductions (collective; every rank holds the same ones)."""
        completed = deque()
        for seq, a, done, posting in self.pending:
            if done is None:
                done = np.zeros_like(self.out)
                self.reducer.collect(seq, done)  # type: ignore[arg-type]
            completed.append((None, a, done, posting))
        self.pending = completed
        return {"grads": [d.copy() for _, _, d, _ in completed], "applied_at": [a for _, a, _, _ in completed],
                "staleness": list(self.staleness)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = deque((None, int(a), np.array(g, dtype=np.float32), 0.0)
                             for g, a in zip(state["grads"], state["applied_at"]))
        self.staleness = [int(x) for x in state.get("staleness", [])]  # absent in older checkpoints


class ReplicaCheck:
    """Periodic proof that the replicas are bit-identical, off the critical path.

    ``post`` takes this rank's parameter checksum (float64 sum and 16-byte digest) and starts a
    non-blocking ``Iallgather`` of it; ``poll`` lets it progress; ``complete`` (called by the next
    ``post``, and at the run's end or a checkpoint: agreed points, so every rank raises together)
    waits for it and compares. A blocking allgather would make every check a synchronising
    point where the faster replicas wait out the slower one's skew; posted and completed one
    check later, the checksums have long arrived when they are compared.
    """

    WIDTH = 24  # bytes per rank: float64 sum, then the digest

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.send = np.zeros(self.WIDTH, dtype=np.uint8)
        self.recv = np.zeros((comm.size, self.WIDTH), dtype=np.uint8)
        self.request: MPI.Request | None = None
        self.update = -1  # the update whose checksums are in flight

    def post(self, module: nn.Module, update: int) -> None:
        """Compare the previous check's checksums (raising on a mismatch), then post this one's."""
        self.complete()
        total, digest = param_checksum(module)
        self.send[:8] = np.frombuffer(np.float64(total).tobytes(), dtype=np.uint8)
        self.send[8:] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
        self.request, self.update = self.comm.Iallgather([self.send, MPI.BYTE], [self.recv, MPI.BYTE]), update

    def poll(self) -> None:
        """Let a check in flight progress (cheap; comparing waits for ``complete``)."""
        if self.request is not None:
            self.request.Test()

    def complete(self, compare: bool = True) -> None:
        """Wait for the check in flight (collective) and raise ``RuntimeError`` on every rank when
        the replicas' digests differ (``compare``: False only frees it, on the way out of a run)."""
        if self.request is None:
            return
        self.request.Wait()
        self.request = None
        if not compare:
            return
        digests = self.recv[:, 8:]
        bad = [r for r in range(self.comm.size) if not np.array_equal(digests[r], digests[0])]
        if bad:
            sums = self.recv[:, :8].copy().view(np.float64).ravel()
            detail = ", ".join(f"rank {r}: sum {sums[r]:.17g}" for r in [0] + bad)
            raise RuntimeError(f"replicas diverged at update {self.update}: rank(s) {bad} differ from rank 0 "
                               f"(parameter checksums; {detail})")
