"""Random sparse MDPs, generated shard-locally and independent of the rank count.

States are generated in fixed blocks, each from its own seeded generator, so a
shard is the same whatever partition produced it.
"""

from __future__ import annotations

import numpy as np

from hpcql.mdp.shard import MdpShard

BLOCK = 4096


def random_mdp_shard(num_states: int, num_actions: int, successors: int, seed: int,
                     row_start: int = 0, row_stop: int | None = None, discount: float | None = None,
                     local_fraction: float = 0.0, local_width: int = 64) -> MdpShard:
    """Rows ``row_start:row_stop`` of a random MDP with ``successors`` entries per row.

    Successors are uniform over all states, except that a ``local_fraction`` of
    them fall within ``local_width`` of the state (banded structure, as in
    physical models); probabilities are normalised uniforms, rewards uniform [0, 1).
    """
    row_stop = num_states if row_stop is None else row_stop
    k, A = successors, num_actions
    parts_idx, parts_p, parts_r = [], [], []
    for b in range(row_start // BLOCK, (row_stop + BLOCK - 1) // BLOCK if row_stop > row_start else row_start // BLOCK):
        b0, b1 = b * BLOCK, min((b + 1) * BLOCK, num_states)
        rng = np.random.default_rng([seed, b])
        n = b1 - b0
        idx = rng.integers(0, num_states, size=(n, A, k), dtype=np.int64)
        near = rng.random((n, A, k)) < local_fraction
        offs = rng.integers(-local_width, local_width + 1, size=(n, A, k))
        states = np.arange(b0, b1)[:, None, None]
        idx = np.where(near, np.clip(states + offs, 0, num_states - 1), idx)
        p = rng.random((n, A, k)) + 1e-3
        p /= p.sum(axis=2, keepdims=True)
        r = rng.random((n, A))
        lo, hi = max(row_start, b0) - b0, min(row_stop, b1) - b0
        parts_idx.append(idx[lo:hi])
        parts_p.append(p[lo:hi])
        parts_r.append(r[lo:hi])
    n_local = row_stop - row_start
    indices = np.concatenate(parts_idx).reshape(-1) if parts_idx else np.zeros(0, dtype=np.int64)
    probs = np.concatenate(parts_p).reshape(-1) if parts_p else np.zeros(0)
    rewards = np.concatenate(parts_r) if parts_r else np.zeros((0, A))
    return MdpShard(num_states, A, row_start, row_stop,
                    np.arange(0, n_local * A * k + 1, k, dtype=np.int64), indices, probs, rewards, discount)
