"""Sums of float32 vectors over a communicator: through node shared memory, or plain MPI.

Both classes have one interface: ``post`` a vector (returns a sequence number), ``ready``
/ ``collect`` a reduction later (or take its ``result`` unsummed, as a ``RowSum`` that the
consumer adds up in its own pass), ``progress`` in between, ``allreduce`` for the blocking case.
``NodeAllreduce`` is the fast one on a node; ``MPIAllreduce`` is ``Iallreduce`` / ``Allreduce``.

A small-message ``MPI_Allreduce`` between ranks of one node costs tens of microseconds in
MPICH (its shared-memory transport copies through cells and handshakes); a DQN update of a
CartPole-sized network costs a few hundred. Here each rank writes its vector into its own
slot of an MPI-3 shared window (``Win.Allocate_shared``; every slot lives in the node
leader's segment, one cache-aligned row per rank) and raises a sequence flag in its own
segment; every rank of the node then sums all slots itself, in node-rank order, so the sums
are the same bits everywhere. Larger nodes split that sum into chunks, one per rank. With
several nodes, the node sums are reduced across the node leaders (each node's first rank)
with ``Iallreduce`` and the leader raises a flag for the rest of its node.

Posting and collecting are separate (``post`` / ``collect``), so an update can start a
reduction and use its result updates later: posting never waits, and with one node nothing
needs MPI progress in between. ``next_slot`` is the array the next ``post`` sends: a vector
computed straight into it is posted without a copy (the DQN gradient is). A ring of ``depth`` slots per rank keeps posts from
overwriting data another rank may still read: a rank that has collected reduction ``s``
knows every rank posted ``s``, hence finished collecting ``s - lag - 1`` (``lag`` = how many
reductions may be in flight); ``depth = 2 * (lag + 1)`` covers both.

Memory ordering: data are stored, then ``Win.Sync`` (a memory fence), then the flag; a
reader sees the flag, calls ``Win.Sync``, then reads the data (the MPI-3 shared-memory
idiom; correct on weakly ordered CPUs too). Waits test the flags and yield the CPU between
tests, so oversubscribed ranks do not starve the rank they wait for.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable, Literal, NamedTuple, Optional

import numpy as np
from mpi4py import MPI

from hpcql.comm import wait_yielding, yield_until

FLAG_STRIDE = 8  # int64s between flags: each flag on its own 64-byte cache line
POSTED, SUMMED, RESULT = 0, 1, 2  # a rank's flags: vector posted, its chunk of the node sum written, inter-node sum
FLAG_BYTES = 3 * FLAG_STRIDE * 8
DIRECT_MAX = 4  # up to this many ranks on a node, each rank sums all slots itself


def _round_up(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def node_communicator(comm: MPI.Comm, ranks_per_node: int = 0) -> MPI.Comm:
    """The ranks of ``comm`` that share this rank's memory (``ranks_per_node`` > 0: consecutive
    groups of that many ranks instead, to emulate several nodes on one machine in tests)."""
    if ranks_per_node > 0:
        return comm.Split(comm.rank // ranks_per_node, key=comm.rank)
    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)


def sum_rows(rows: np.ndarray, lo: int, hi: int, out: np.ndarray, divisor: float) -> None:
    """``out = (rows[0, lo:hi] + rows[1, lo:hi] + ...) / divisor`` in float32, rows added in order
    (every rank doing this gets the same bits; at 2 ranks, the bits of MPI's sum then divide)."""
    if rows.shape[0] == 1:
        np.copyto(out, rows[0, lo:hi])
    else:
        np.add(rows[0, lo:hi], rows[1, lo:hi], out=out)
    for r in range(2, rows.shape[0]):
        out += rows[r, lo:hi]
    divide(out, divisor)


class RowSum(NamedTuple):
    """A reduction not yet added up: ``(rows[0, :size] + rows[1, :size] + ...) / divisor``, rows in order.

    ``rows`` is C-contiguous, ``(k, >= size)`` float32: a reducer's shared slots (every rank's
    vector) or node sums, read in place. A consumer that passes over the vector anyway (the
    optimizer) adds them up inside its own pass (``numpy_adam``) instead of a separate summing
    pass and a copy; ``into`` gives the same bits as a plain array.
    """

    rows: np.ndarray
    size: int
    divisor: float

    @classmethod
    def of(cls, vec: np.ndarray, divisor: float = 1.0) -> "RowSum":
        """``vec / divisor`` (a contiguous 1-D float32 array) as a one-row sum."""
        return cls(vec.reshape(1, -1), vec.size, divisor)

    def into(self, out: np.ndarray) -> np.ndarray:
        """``out`` = the sum (``sum_rows``' bits); no pass when it is ``out`` itself, undivided."""
        if not (self.rows.shape[0] == 1 and self.divisor == 1 and self.rows.ctypes.data == out.ctypes.data):
            sum_rows(self.rows, 0, self.size, out, self.divisor)
        return out


def divide(vec: np.ndarray, divisor: float) -> None:
    """``vec /= divisor`` in float32 (no pass when ``divisor`` is 1).

    A power-of-two divisor multiplies by its reciprocal instead: exact, so the same bits as
    dividing, and about half the time of a float32 division pass.
    """
    if divisor == 1:
        return
    mantissa, _ = math.frexp(divisor)
    if mantissa == 0.5:  # divisor = 2**k: 1/divisor is exact
        np.multiply(vec, np.float32(1.0 / divisor), out=vec)
    else:
        np.divide(vec, np.float32(divisor), out=vec)


class Collecting(ABC):
    """What both reducers share: ``collect`` is ``result`` added up into an array."""

    @abstractmethod
    def result(self, seq: int, divisor: float = 1.0, between: Callable[[], None] | None = None,
               out: np.ndarray | None = None) -> RowSum:
        """Complete reduction ``seq``; its sum / ``divisor`` as a ``RowSum``."""

    def collect(self, seq: int, out: np.ndarray, divisor: float = 1.0,
                between: Callable[[], None] | None = None) -> None:
        """Wait for reduction ``seq``; ``out`` = the sum / ``divisor`` (``result`` added up).
        ``between`` runs between tests while it is not complete (see ``comm.yield_until``)."""
        self.result(seq, divisor, between).into(out)


class NodeAllreduce(Collecting):
    """Elementwise sum of ``size``-long float32 vectors over ``comm`` (collective constructor).

    ``lag``: reductions a rank may post before collecting the oldest (0 for a blocking
    allreduce). Every rank must post and collect the same sequence of reductions.

    Up to ``direct_max`` ranks on one node, every rank sums all slots itself. Beyond that
    (so that no rank reads every other rank's vector), or with several nodes, the node sum
    goes into a shared buffer in the leader's segment: each rank sums one contiguous chunk
    of it (with several small nodes the leader sums it all), then everyone copies it.
    """

    def __init__(self, comm: MPI.Comm, size: int, lag: int = 0, ranks_per_node: int = 0,
                 direct_max: int = DIRECT_MAX) -> None:
        self.size, self.depth = size, 2 * (lag + 1)
        self.node = node_communicator(comm, ranks_per_node)
        self.leader = self.node.rank == 0
        self.nodes = comm.allreduce(1 if self.leader else 0, op=MPI.SUM)
        self.leaders: Optional[MPI.Comm] = None
        if self.nodes > 1:
            leaders = comm.Split(0 if self.leader else MPI.UNDEFINED, key=comm.rank)
            self.leaders = leaders if self.leader else None  # the others get MPI.COMM_NULL
        self.direct = self.nodes == 1 and self.node.size <= direct_max
        stride = _round_up(size, 16)  # floats per slot: every slot starts on a cache line
        slots_bytes = self.depth * self.node.size * stride * 4
        sums_bytes = 0 if self.direct else self.depth * stride * 4
        # the leader's segment holds every slot (one (depth, ranks, stride) array) and the node sums
        nbytes = FLAG_BYTES + (slots_bytes + sums_bytes if self.leader else 0)
        self.win = MPI.Win.Allocate_shared(nbytes, 1, comm=self.node)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.flags: list[np.ndarray] = []  # per node rank: its three flags (int64 views)
        for r in range(self.node.size):
            mem, _ = self.win.Shared_query(r)
            self.flags.append(np.frombuffer(mem, dtype=np.uint8)[:FLAG_BYTES].view(np.int64)[::FLAG_STRIDE])
        base = np.frombuffer(self.win.Shared_query(0)[0], dtype=np.uint8)[FLAG_BYTES:]
        # posted vectors, (depth, node ranks, size); node sums, (depth, size) (empty when direct)
        self.slots = base[:slots_bytes].view(np.float32).reshape(self.depth, self.node.size, stride)
        self.sums = base[slots_bytes:slots_bytes + sums_bytes].view(np.float32).reshape(-1, 1, stride)
        self.own = [self.slots[d, self.node.rank, :size] for d in range(self.depth)]  # this rank's slots
        # this rank's chunk of the node sum: an even split, or all of it on the leader of a small node
        if self.nodes > 1 and self.node.size <= direct_max:
            self.chunk = slice(0, size if self.leader else 0)
        else:
            edges = np.linspace(0, size, self.node.size + 1).astype(np.int64)
            self.chunk = slice(int(edges[self.node.rank]), int(edges[self.node.rank + 1]))
        self.flags[self.node.rank][:] = 0
        self.win.Sync()
        self.node.Barrier()
        self.posted = 0  # reductions this rank posted
        self.summed = 0  # reductions whose chunk this rank summed
        self.started = 0  # leader, several nodes: reductions handed to the other leaders
        self.inter: deque[tuple[int, MPI.Request]] = deque()

    def next_slot(self) -> np.ndarray:
        """The array the next ``post`` sends: write the vector here and ``post`` it without a copy.

        Safe to write whenever ``post`` would be (at most ``lag`` reductions posted and not yet
        collected): the ring's ``depth`` guarantees every other rank is done reading it then.
        Never ``collect`` into it: other ranks read it until they have collected it too."""
        return self.own[(self.posted + 1) % self.depth]

    def post(self, vec: np.ndarray) -> int:
        """Offer this rank's ``vec`` (copied unless it is ``next_slot()``) for the next reduction;
        returns its sequence number."""
        self.posted += 1
        seq = self.posted
        slot = self.own[seq % self.depth]
        if vec is not slot:
            slot[...] = vec
        self.win.Sync()
        self.flags[self.node.rank][POSTED] = seq
        self.progress()
        return seq

    def _all(self, flag: int, seq: int) -> bool:
        return all(int(f[flag]) >= seq for f in self.flags)

    def _sum_slots(self, seq: int, out: np.ndarray, part: slice, divisor: float = 1.0) -> None:
        """``out`` = the sum of every rank's slot of reduction ``seq`` (columns ``part``) / ``divisor``."""
        lo, hi, _ = part.indices(self.size)
        sum_rows(self.slots[seq % self.depth], lo, hi, out, divisor)

    def progress(self) -> None:
        """Advance pending reductions without waiting: sum this rank's chunk of each node sum
        whose vectors are all posted; on a leader of several nodes, hand complete node sums to
        the other leaders and publish the finished ones. Call it now and then while reductions
        are pending (``ready`` and ``post`` do)."""
        if self.direct:
            return
        me = self.flags[self.node.rank]
        while self.summed < self.posted and self._all(POSTED, self.summed + 1):
            self.summed += 1
            self.win.Sync()
            self._sum_slots(self.summed, self.sums[self.summed % self.depth, 0, self.chunk], self.chunk)
            self.win.Sync()
            me[SUMMED] = self.summed
        if self.leaders is None:
            return
        while self.started < self.summed and self._all(SUMMED, self.started + 1):
            self.started += 1
            self.win.Sync()
            out = self.sums[self.started % self.depth, 0, :self.size]
            self.inter.append((self.started, self.leaders.Iallreduce(MPI.IN_PLACE, out, op=MPI.SUM)))
        while self.inter and self.inter[0][1].Test():
            seq, _ = self.inter.popleft()
            self.win.Sync()
            me[RESULT] = seq

    def ready(self, seq: int) -> bool:
        """Whether ``collect(seq)`` would return without waiting (drives progress)."""
        if self.direct:  # nothing to progress: every rank sums the posted slots itself
            return self._all(POSTED, seq)
        self.progress()
        if self.nodes > 1:
            return int(self.flags[0][RESULT]) >= seq
        return self._all(SUMMED, seq)

    def result(self, seq: int, divisor: float = 1.0, between: Callable[[], None] | None = None,
               out: np.ndarray | None = None) -> RowSum:
        """Wait for reduction ``seq``; its sum / ``divisor`` unsummed, read in place (the same bits
        on every rank, however it is added up; ``out`` is not needed).

        The rows stay valid until this rank posts again (then another rank may overwrite them):
        use them before the next ``post``. ``between`` runs between tests while it is not
        complete (see ``comm.yield_until``)."""
        yield_until(lambda: self.ready(seq), between)
        self.win.Sync()
        rows = self.slots[seq % self.depth] if self.direct else self.sums[seq % self.depth]
        return RowSum(rows, self.size, divisor)

    def allreduce(self, vec: np.ndarray, divisor: float = 1.0, between: Callable[[], None] | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Blocking: ``out`` (default ``vec``; not ``next_slot()``) = the sum of every rank's ``vec`` /
        ``divisor``, returned; ``between`` as in ``collect``."""
        out = vec if out is None else out
        return self.reduce(vec, divisor, between).into(out)

    def reduce(self, vec: np.ndarray, divisor: float = 1.0, between: Callable[[], None] | None = None,
               out: np.ndarray | None = None) -> RowSum:
        """Blocking, unsummed: ``post`` then ``result`` (``out`` is not needed)."""
        return self.result(self.post(vec), divisor, between)

    def close(self) -> None:
        """Free the window and the communicators (collective; every posted reduction collected)."""
        while self.inter:
            self.inter.popleft()[1].Wait()
        self.node.Barrier()  # nobody frees memory another rank may still read
        self.win.Unlock_all()
        self.win.Free()
        if self.leaders is not None:
            self.leaders.Free()
        self.node.Free()


class MPIAllreduce(Collecting):
    """``NodeAllreduce``'s interface on ``Iallreduce`` (posted) and ``Allreduce`` (blocking)."""

    def __init__(self, comm: MPI.Comm, size: int, lag: int = 0) -> None:
        self.comm = comm
        self.pool = [np.zeros(size, dtype=np.float32) for _ in range(lag + 1)]
        self.pending: dict[int, tuple[MPI.Request, np.ndarray]] = {}
        self.posted = 0

    def next_slot(self) -> np.ndarray:
        """The buffer the next ``post`` sends (``NodeAllreduce.next_slot``)."""
        return self.pool[-1]

    def post(self, vec: np.ndarray) -> int:
        self.posted += 1
        buf = self.pool.pop()
        if vec is not buf:
            buf[...] = vec
        self.pending[self.posted] = (self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), buf)
        return self.posted

    def progress(self) -> None:
        for req, _ in self.pending.values():
            req.Test()

    def ready(self, seq: int) -> bool:
        return bool(self.pending[seq][0].Test())

    def result(self, seq: int, divisor: float = 1.0, between: Callable[[], None] | None = None,
               out: np.ndarray | None = None) -> RowSum:
        """Complete reduction ``seq``; its sum / ``divisor`` as a one-row ``RowSum`` of the request's
        own buffer, not copied (``out`` is not needed). As with ``NodeAllreduce.result``, use it
        before the next ``post``: the buffer goes back to the pool and that post may reuse it."""
        req, buf = self.pending.pop(seq)
        if between is None:
            req.Wait()
        else:
            wait_yielding(req, between)
        self.pool.append(buf)
        return RowSum.of(buf, divisor)

    def allreduce(self, vec: np.ndarray, divisor: float = 1.0, between: Callable[[], None] | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """``Allreduce`` into ``out`` (default: in place); with ``between``: ``Iallreduce``, running
        ``between`` while it is not complete."""
        send = MPI.IN_PLACE if out is None or out is vec else vec
        out = vec if out is None else out
        if between is None:
            self.comm.Allreduce(send, out, op=MPI.SUM)
        else:
            wait_yielding(self.comm.Iallreduce(send, out, op=MPI.SUM), between)
        divide(out, divisor)
        return out

    def reduce(self, vec: np.ndarray, divisor: float = 1.0, between: Callable[[], None] | None = None,
               out: np.ndarray | None = None) -> RowSum:
        """``allreduce`` as a one-row ``RowSum`` (``NodeAllreduce.reduce``)."""
        return RowSum.of(self.allreduce(vec, divisor, between, out))

    def close(self) -> None:
        for req, _ in self.pending.values():
            req.Wait()
        self.pending.clear()


Transport = Literal["shared-memory", "mpi"]


def vector_allreduce(kind: Transport, comm: MPI.Comm, size: int, lag: int = 0,
                     ranks_per_node: int = 0) -> NodeAllreduce | MPIAllreduce:
    """The reducer ``kind`` names (collective)."""
    if kind == "shared-memory":
        return NodeAllreduce(comm, size, lag, ranks_per_node)
    return MPIAllreduce(comm, size, lag)
