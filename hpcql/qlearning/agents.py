"""A rank's agents as flat arrays, and their packing for migration.

An agent is (global id, global state, rng counter, episode step). Packed, it is
one int64 row of ``RECORD`` fields, so a batch of migrants is one message;
``exchange_agents`` delivers such batches to their owners in one collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcql.comm import displacements, wait_yielding
from hpcql.partition import owner_of

RECORD = 4  # id, state, ctr (uint64 bits), episode step


@dataclass
class Agents:
    """Struct of arrays; ``states < 0`` means not placed yet (restarts first)."""

    ids: np.ndarray
    states: np.ndarray
    ctrs: np.ndarray
    ep_steps: np.ndarray

    @classmethod
    def create(cls, first_id: int, count: int) -> "Agents":
        """``count`` unplaced agents with ids ``first_id ..``."""
        return cls(np.arange(first_id, first_id + count, dtype=np.int64), np.full(count, -1, dtype=np.int64),
                   np.zeros(count, dtype=np.uint64), np.zeros(count, dtype=np.int64))

    @classmethod
    def empty(cls) -> "Agents":
        return cls.create(0, 0)

    def __len__(self) -> int:
        return int(self.ids.size)

    def pack(self, mask: np.ndarray | None = None) -> np.ndarray:
        """(n, RECORD) int64 records of the selected agents."""
        sel = slice(None) if mask is None else mask
        out = np.empty((self.ids[sel].size, RECORD), dtype=np.int64)
        out[:, 0] = self.ids[sel]
        out[:, 1] = self.states[sel]
        out[:, 2] = self.ctrs[sel].view(np.int64)
        out[:, 3] = self.ep_steps[sel]
        return out

    @classmethod
    def unpack(cls, records: np.ndarray) -> "Agents":
        rec = np.asarray(records, dtype=np.int64).reshape(-1, RECORD)
        return cls(rec[:, 0].copy(), rec[:, 1].copy(), rec[:, 2].copy().view(np.uint64), rec[:, 3].copy())

    def keep(self, mask: np.ndarray) -> "Agents":
        return Agents(self.ids[mask], self.states[mask], self.ctrs[mask], self.ep_steps[mask])

    @staticmethod
    def concat(parts: list["Agents"]) -> "Agents":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Agents.empty()
        return Agents(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "states", "ctrs", "ep_steps")))


def split_migrants(agents: Agents, moved: np.ndarray, offsets: np.ndarray) -> tuple[Agents, np.ndarray, np.ndarray]:
    """(stayers, migrant records sorted by owner rank (stable), count per rank)."""
    size = len(offsets) - 1
    if not moved.any():
        return agents, np.empty((0, RECORD), dtype=np.int64), np.zeros(size, dtype=np.int64)
    records = agents.pack(moved)
    dest = owner_of(records[:, 1], offsets)
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=size).astype(np.int64)
    return agents.keep(~moved), records[order], counts


def exchange_agents(comm: MPI.Comm, records: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Send each rank its migrant records (sorted by destination); arrivals in source-rank order (collective)."""
    recv_counts = np.zeros(comm.size, dtype=np.int64)
    wait_yielding(comm.Ialltoall(counts, recv_counts))  # every round: a blocking one would spin (allreduce_yielding)
    recv = np.empty((int(recv_counts.sum()), RECORD), dtype=np.int64)
    send = np.ascontiguousarray(records, dtype=np.int64)
    wait_yielding(comm.Ialltoallv([send, counts * RECORD, displacements(counts) * RECORD, MPI.INT64_T],
                                  [recv, recv_counts * RECORD, displacements(recv_counts) * RECORD, MPI.INT64_T]))
    return recv
