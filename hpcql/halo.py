"""Halo (ghost value) plans and the exchange that uses them.

The plan is computed once from the column indices of a rank's rows:
``ghost_layout`` (pure) finds the off-rank states the rows reach, grouped by
owner, and remaps every column index into the local "extended" vector
``[local values | ghost values]``; ``send_lists`` (pure) turns the other
ranks' requests into the local indices to send. ``HaloExchange`` does the MPI
part: one request exchange at set-up, then one ``Neighbor_alltoallv`` on a
distributed-graph communicator per exchange (sync), or per-neighbour
non-blocking messages (async solvers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcql.comm import displacements, wait_yielding
from hpcql.partition import owner_of


@dataclass(frozen=True)
class GhostLayout:
    """Which off-rank values a rank needs and where they live locally."""

    ghost_states: np.ndarray
    """Global ids of ghost states, sorted (hence grouped by owner rank)."""
    recv_counts: np.ndarray
    """Ghost count per owner rank (length = number of ranks)."""
    local_cols: np.ndarray
    """Column indices remapped into ``[0, n_local + n_ghost)`` (int32)."""


def ghost_layout(indices: np.ndarray, offsets: np.ndarray, rank: int) -> GhostLayout:
    """Pure: ghost states and remapped columns for the rows of ``rank``."""
    start, stop = int(offsets[rank]), int(offsets[rank + 1])
    n_local = stop - start
    idx = np.asarray(indices, dtype=np.int64)
    off = (idx < start) | (idx >= stop)
    ghost_states = np.unique(idx[off])
    owners = owner_of(ghost_states, offsets)
    recv_counts = np.bincount(owners, minlength=len(offsets) - 1).astype(np.int64)
    local_cols = np.empty(idx.size, dtype=np.int64)
    local_cols[~off] = idx[~off] - start
    local_cols[off] = n_local + np.searchsorted(ghost_states, idx[off])
    if n_local + ghost_states.size >= 2**31:
        raise ValueError("shard too large for int32 local column indices")
    return GhostLayout(ghost_states, recv_counts, local_cols.astype(np.int32))


def send_lists(requests: list[np.ndarray], row_start: int) -> list[np.ndarray]:
    """Pure: local indices to send to each rank, from the global ids it requested."""
    return [np.asarray(r, dtype=np.int64) - row_start for r in requests]


class HaloExchange:
    """Exchanges ghost values of a sharded vector (collective set-up on ``comm``).

    ``exchange(values_ext)`` fills ``values_ext[n_local:]`` with the owners'
    current values of ``values_ext[:n_local]``.
    """

    def __init__(self, comm: MPI.Comm, layout: GhostLayout, offsets: np.ndarray) -> None:
        self.comm = comm
        rank = comm.rank
        self.n_local = int(offsets[rank + 1] - offsets[rank])
        self.n_ghost = int(layout.ghost_states.size)
        recv_counts = layout.recv_counts
        # Tell every owner which of its states we need.
        send_req_counts = np.zeros(comm.size, dtype=np.int64)
        comm.Alltoall(recv_counts, send_req_counts)
        requested = np.empty(int(send_req_counts.sum()), dtype=np.int64)
        comm.Alltoallv(
            [layout.ghost_states, recv_counts, displacements(recv_counts), MPI.INT64_T],
            [requested, send_req_counts, displacements(send_req_counts), MPI.INT64_T],
        )
        splits = np.split(requested, np.cumsum(send_req_counts)[:-1])
        per_rank_send = send_lists(splits, int(offsets[rank]))
        self.sources = [r for r in range(comm.size) if recv_counts[r] > 0]
        self.destinations = [r for r in range(comm.size) if send_req_counts[r] > 0]
        self.recv_counts = np.array([recv_counts[r] for r in self.sources], dtype=np.int64)
        self.send_counts = np.array([send_req_counts[r] for r in self.destinations], dtype=np.int64)
        self.recv_displs = displacements(self.recv_counts)
        self.send_displs = displacements(self.send_counts)
        self.send_idx = {r: per_rank_send[r] for r in self.destinations}
        self.send_flat = (
            np.concatenate([per_rank_send[r] for r in self.destinations]) if self.destinations
            else np.empty(0, dtype=np.int64)
        )
        self.recv_slices = {
            r: slice(self.n_local + int(d), self.n_local + int(d + c))
            for r, d, c in zip(self.sources, self.recv_displs, self.recv_counts)
        }
        self.graph = comm.Create_dist_graph_adjacent(self.sources, self.destinations, reorder=False)
        self._send_buf = np.empty(self.send_flat.size, dtype=np.float64)

    @property
    def neighbours(self) -> int:
        """Number of ranks this rank exchanges with (in or out)."""
        return len(set(self.sources) | set(self.destinations))

    def exchange(self, values_ext: np.ndarray) -> None:
        """Synchronous exchange: fill the ghost part of ``values_ext`` (collective)."""
        if self.comm.size == 1:
            return  # nothing to exchange, and the collective call itself costs milliseconds
        np.take(values_ext, self.send_flat, out=self._send_buf)
        ghosts = values_ext[self.n_local:]
        wait_yielding(self.graph.Ineighbor_alltoallv(  # not the blocking call: it spins (see allreduce_yielding)
            [self._send_buf, self.send_counts, self.send_displs, MPI.DOUBLE],
            [ghosts, self.recv_counts, self.recv_displs, MPI.DOUBLE],
        ))

    def free(self) -> None:
        """Release the graph communicator."""
        if self.graph != MPI.COMM_NULL:
            self.graph.Free()
