"""Contiguous block partitions of the state space (pure functions, no MPI).

A partition is an int64 array ``offsets`` of length ``size + 1``: rank r owns
global states ``offsets[r]:offsets[r+1]``; all actions of a state stay together.
"""

from __future__ import annotations

import numpy as np


def uniform_partition(num_states: int, size: int) -> np.ndarray:
    """Equal state counts (the first ``num_states % size`` ranks get one more)."""
    base, extra = divmod(num_states, size)
    counts = np.full(size, base, dtype=np.int64)
    counts[:extra] += 1
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


def weighted_partition(cum_weight: np.ndarray, size: int) -> np.ndarray:
    """Balance a cumulative per-state weight (e.g. transition entries, nnz).

    ``cum_weight`` has length S+1, starts at 0 and is non-decreasing; the cut for
    rank r is the state boundary nearest to ``r * total / size``.
    """
    cum = np.asarray(cum_weight, dtype=np.float64)
    num_states = cum.size - 1
    total = cum[-1]
    if total <= 0:
        return uniform_partition(num_states, size)
    targets = total * np.arange(1, size) / size
    right = np.searchsorted(cum, targets, side="left").clip(0, num_states)
    left = (right - 1).clip(0, num_states)
    nearer_left = np.abs(cum[left] - targets) <= np.abs(cum[right] - targets)
    cuts = np.where(nearer_left, left, right)
    cuts = np.maximum.accumulate(cuts)
    return np.concatenate(([0], cuts, [num_states])).astype(np.int64)


def owner_of(states: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rank owning each global state id."""
    return np.searchsorted(offsets, states, side="right") - 1
