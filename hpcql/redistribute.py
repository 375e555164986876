"""Move row-sharded data from one contiguous partition to another (collective).

Both partitions are ``offsets`` arrays (see ``hpcql.partition``). Each rank's old
block overlaps a run of new blocks, so every array moves in one ``Alltoallv``
and arrives already in global row order. ``RowMover.rows`` moves arrays with one
row per state (Q, visit counts, values); ``RowMover.shard`` moves a whole
``MdpShard`` (CSR rows, rewards, outcome rewards), whatever source built it.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import displacements
from hpcql.mdp.shard import MdpShard


def overlaps(start: int, stop: int, offsets: np.ndarray) -> np.ndarray:
    """Pure: how many states of ``[start, stop)`` fall in each block of ``offsets``."""
    off = np.asarray(offsets, dtype=np.int64)
    return np.clip(np.minimum(stop, off[1:]) - np.maximum(start, off[:-1]), 0, None).astype(np.int64)


class RowMover:
    """The Alltoallv plan from partition ``old`` to partition ``new`` on ``comm``."""

    def __init__(self, comm: MPI.Comm, old: np.ndarray, new: np.ndarray) -> None:
        self.comm = comm
        self.old = np.asarray(old, dtype=np.int64)
        self.new = np.asarray(new, dtype=np.int64)
        r = comm.rank
        self.send_states = overlaps(int(self.old[r]), int(self.old[r + 1]), self.new)
        self.recv_states = overlaps(int(self.new[r]), int(self.new[r + 1]), self.old)
        self.n_new = int(self.new[r + 1] - self.new[r])

    def _move(self, data: np.ndarray, send: np.ndarray, recv: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
        """Move ``data`` (leading axis split by ``send`` counts) as raw bytes."""
        data = np.ascontiguousarray(data)
        per = int(np.prod(row_shape, dtype=np.int64)) * data.dtype.itemsize
        out = np.empty((int(recv.sum()),) + row_shape, dtype=data.dtype)
        sc, rc = send * per, recv * per
        self.comm.Alltoallv([data.view(np.uint8).reshape(-1), sc, displacements(sc), MPI.BYTE],
                            [out.view(np.uint8).reshape(-1), rc, displacements(rc), MPI.BYTE])
        return out

    def rows(self, data: np.ndarray) -> np.ndarray:
        """This rank's new rows of a state-major array (one row per local state)."""
        return self._move(data, self.send_states, self.recv_states, tuple(data.shape[1:]))

    def entries(self, data: np.ndarray, state_ptr: np.ndarray, new_state_ptr: np.ndarray) -> np.ndarray:
        """New entries of a per-entry array; ``state_ptr`` indexes each local state's first entry.

        ``new_state_ptr`` is the same for the new block (moved with ``rows`` first).
        """
        cut = np.concatenate(([0], np.cumsum(self.send_states)))
        send = np.diff(np.asarray(state_ptr, dtype=np.int64)[cut])
        cut_in = np.concatenate(([0], np.cumsum(self.recv_states)))
        recv = np.diff(np.asarray(new_state_ptr, dtype=np.int64)[cut_in])
        return self._move(data, send, recv, tuple(data.shape[1:]))

    def shard(self, sh: MdpShard) -> MdpShard:
        """This rank's rows of the same MDP under the new partition."""
        A = sh.num_actions
        row_len = self.rows(np.diff(sh.indptr).reshape(sh.n_local, A))
        indptr = np.concatenate(([0], np.cumsum(row_len.reshape(-1)))).astype(sh.indptr.dtype)
        state_ptr, new_state_ptr = sh.indptr[::A], indptr[::A]
        r = self.comm.rank
        return MdpShard(
            sh.num_states, A, int(self.new[r]), int(self.new[r + 1]), indptr,
            self.entries(sh.indices, state_ptr, new_state_ptr), self.entries(sh.probs, state_ptr, new_state_ptr),
            self.rows(sh.rewards.reshape(sh.n_local, A)), sh.discount, sh.grid_shape, dict(sh.meta),
            None if sh.entry_rewards is None else self.entries(sh.entry_rewards, state_ptr, new_state_ptr),
        )
