"""A rank's rows of a sparse MDP, in the state-major CSR layout of the MDP file."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MdpShard:
    """Rows ``row_start*A .. row_stop*A`` of the global transition matrix.

    Row ``(s - row_start) * A + a`` of ``indptr``/``indices``/``probs`` is
    P(. | s, a); ``indices`` hold global next-state ids. ``rewards`` are the
    expected rewards R(s, a) every solver uses; sources that know the reward of
    each outcome also give ``entry_rewards`` (one per transition entry, with
    ``sum_k p_k r_k = R(s, a)``), which sampling learners draw instead of R(s, a)
    so that a sampled target carries the reward of the outcome it sampled.
    """

    num_states: int
    num_actions: int
    row_start: int
    row_stop: int
    indptr: np.ndarray
    indices: np.ndarray
    probs: np.ndarray
    rewards: np.ndarray
    discount: float | None = None
    grid_shape: tuple[int, int] | None = None
    """(rows, cols) for gridworlds: state id = row * cols + col."""
    meta: dict[str, object] = field(default_factory=dict)
    entry_rewards: np.ndarray | None = None
    """Reward of each transition entry r(s, a, s'), or None (use R(s, a) for every outcome)."""

    @property
    def n_local(self) -> int:
        return self.row_stop - self.row_start

    @property
    def nnz(self) -> int:
        return int(self.indices.size)


def validate_rows(shard: MdpShard, atol: float = 1e-9) -> tuple[int, str] | None:
    """First invalid row of ``shard`` as (global row, reason), or None.

    Checks finite non-negative probabilities, next-state ids in range and row sums of 1
    (comparisons written so that NaN fails them).
    """
    A, S = shard.num_actions, shard.num_states
    rows = np.repeat(np.arange(shard.n_local * A, dtype=np.int64), np.diff(shard.indptr))
    bad: list[tuple[int, str]] = []
    neg = np.flatnonzero(~((shard.probs >= 0) & np.isfinite(shard.probs)))
    if neg.size:
        k = neg[0]
        what = "negative" if shard.probs[k] < 0 else "non-finite"
        bad.append((int(rows[k]), f"{what} probability {shard.probs[k]:g}"))
    out = np.flatnonzero((shard.indices < 0) | (shard.indices >= S))
    if out.size:
        k = out[0]
        bad.append((int(rows[k]), f"next-state index {int(shard.indices[k])} out of range [0, {S})"))
    sums = np.bincount(rows, weights=shard.probs, minlength=shard.n_local * A)
    off = np.flatnonzero(~(np.abs(sums - 1.0) <= atol))
    if off.size:
        k = off[0]
        bad.append((int(k), f"probabilities sum to {sums[k]:.12g}, not 1"))
    if not bad:
        return None
    local_row, reason = min(bad)
    global_row = shard.row_start * A + local_row
    s, a = divmod(global_row, A)
    return global_row, f"row {global_row} (state {s}, action {a}): {reason}"


def slice_shard(shard: MdpShard, start: int, stop: int) -> MdpShard:
    """Rows of global states ``start:stop`` of a shard that holds them."""
    A = shard.num_actions
    lo_row, hi_row = (start - shard.row_start) * A, (stop - shard.row_start) * A
    lo, hi = int(shard.indptr[lo_row]), int(shard.indptr[hi_row])
    return MdpShard(
        shard.num_states, A, start, stop,
        shard.indptr[lo_row: hi_row + 1] - lo, shard.indices[lo:hi], shard.probs[lo:hi],
        shard.rewards[start - shard.row_start: stop - shard.row_start],
        shard.discount, shard.grid_shape, dict(shard.meta),
        None if shard.entry_rewards is None else shard.entry_rewards[lo:hi],
    )


def sampled_rewards(shard: MdpShard) -> np.ndarray:
    """Reward of every transition entry: ``entry_rewards``, else R(s, a) repeated over the row."""
    if shard.entry_rewards is not None:
        return shard.entry_rewards
    return np.repeat(shard.rewards.reshape(-1), np.diff(shard.indptr))


def state_nnz_cumulative(shard: MdpShard) -> np.ndarray:
    """Cumulative transition entries at the shard's state boundaries."""
    return shard.indptr[:: shard.num_actions].astype(np.int64)
