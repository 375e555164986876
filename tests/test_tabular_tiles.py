"""Column-blocked (tiled) Jacobi sweeps against scipy.sparse, on one shard and across partitions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from mpi4py import MPI

from hpcql.halo import ghost_layout
from hpcql.mdp.random_mdp import random_mdp_shard
from hpcql.mdp.shard import MdpShard
from hpcql.partition import uniform_partition
from hpcql.tabular.problem import make_problem
from hpcql.tabular.tiles import TILES_MIN_VALUES, build_tiles, row_block_for, tiled_sweep_range

GAMMA = 0.97


def ragged_shard(S: int, A: int, seed: int) -> MdpShard:
    """Rows of 1..20 successors (some repeated, some rows longer than the insertion-sort limit)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 21, S * A)
    counts[::17] = 40  # long rows take the merge-sort path
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = rng.integers(0, S, indptr[-1])
    two = indptr[:-1][counts >= 2]
    idx[two + 1] = idx[two]  # a repeated successor in every row of two or more
    p = rng.random(indptr[-1]) + 1e-3
    p /= np.add.reduceat(p, indptr[:-1])[np.repeat(np.arange(S * A), counts)]
    return MdpShard(S, A, 0, S, indptr, idx, p, rng.random((S, A)))


def scipy_sweep(sh: MdpShard, v: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    S, A = sh.num_states, sh.num_actions
    P = sp.csr_matrix((sh.probs if probs is None else probs, sh.indices, sh.indptr), shape=(S * A, S))
    return sh.rewards + GAMMA * (P @ v).reshape(S, A)


def tiled_partition_sweep(sh: MdpShard, v: np.ndarray, ranks: int, row_block: int, col_bits: int,
                          probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The tiled sweep of every shard of ``sh`` under a uniform ``ranks``-way partition (no MPI: each
    shard's extended vector filled from ``v``); V, policy and the (min, max) change, concatenated."""
    probs = sh.probs if probs is None else probs
    offsets = uniform_partition(sh.num_states, ranks)
    A = sh.num_actions
    outs, pols, lo, hi = [], [], np.inf, -np.inf
    for rank in range(ranks):
        a, b = int(offsets[rank]), int(offsets[rank + 1])
        ip = sh.indptr[a * A:b * A + 1] - sh.indptr[a * A]
        sl = slice(int(sh.indptr[a * A]), int(sh.indptr[b * A]))
        layout = ghost_layout(sh.indices[sl], offsets, rank)
        tiles = build_tiles(ip, layout.local_cols, probs[sl], layout.ghost_states, a, sh.num_states, A,
                            row_block, col_bits)
        v_ext = np.concatenate([v[a:b], v[layout.ghost_states]])
        v_out, pol = np.empty(b - a), np.zeros(b - a, dtype=np.int64)
        r = tiled_sweep_range(*tiles.sweep_args(), sh.rewards[a:b], v_ext, v_out, GAMMA, pol)
        outs.append(v_out)
        pols.append(pol)
        if b > a:
            lo, hi = min(lo, r[0]), max(hi, r[1])
    return np.concatenate(outs), np.concatenate(pols), lo, hi


CASES = {"random-8": lambda: random_mdp_shard(3000, 4, 8, seed=11),
         "random-3-actions": lambda: random_mdp_shard(2000, 3, 5, seed=4, local_fraction=0.3),
         "ragged": lambda: ragged_shard(1500, 2, seed=9)}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("blocks", [(64, 8), (1000, 12), (None, 14), (3, 0)])
def test_tiled_sweep_matches_scipy_on_every_partition(name, blocks):
    sh = CASES[name]()
    row_block = row_block_for(sh.num_actions) if blocks[0] is None else blocks[0]
    v = np.random.default_rng(3).normal(size=sh.num_states)
    q = scipy_sweep(sh, v)
    one = None
    for ranks in (1, 2, 3, 5):
        v_out, pol, lo, hi = tiled_partition_sweep(sh, v, ranks, row_block, blocks[1])
        np.testing.assert_allclose(v_out, q.max(axis=1), rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(pol, q.argmax(axis=1))
        assert (lo, hi) == pytest.approx(((v_out - v).min(), (v_out - v).max()), rel=1e-12)
        # every row sums its terms in global column order: bitwise the same at any rank count
        one = v_out if one is None else one
        assert v_out.tobytes() == one.tobytes(), ranks


def test_tiled_sweep_on_float32_probabilities():
    sh = random_mdp_shard(2000, 4, 8, seed=2)
    p32 = sh.probs.astype(np.float32)
    v = np.random.default_rng(5).random(sh.num_states)
    q = scipy_sweep(sh, v, p32.astype(np.float64))
    v_out, pol, _, _ = tiled_partition_sweep(sh, v, 2, 100, 9, probs=p32)
    np.testing.assert_allclose(v_out, q.max(axis=1), rtol=1e-13)
    np.testing.assert_array_equal(pol, q.argmax(axis=1))


def test_tile_sizes_that_overflow_32_bit_keys_are_refused():
    sh = random_mdp_shard(100, 4, 3, seed=1)
    cols = sh.indices.astype(np.int32)
    none = np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match="32-bit"):  # 2^16 rows need 16 row bits beside 17 column bits
        build_tiles(sh.indptr, cols, sh.probs, none, 0, 100, 4, 2**14, 17)
    with pytest.raises(ValueError, match="32-bit"):
        build_tiles(sh.indptr, cols, sh.probs, none, 0, 100, 4, 16, 32)
    build_tiles(sh.indptr, cols, sh.probs, none, 0, 100, 4, 2**14, 16)  # 16 + 16 bits: fits
    assert row_block_for(4) == 16384 and row_block_for(2**19) == 0


def test_problem_tiles_scattered_shards_only_and_sweeps_them():
    from hpcql.config import GridworldEnv
    from hpcql.mdp.gridworld import gridworld_shard

    grid = gridworld_shard(GridworldEnv(kind="gridworld", rows=300, cols=300, slip=0.1), 0, 0, 90000)
    problem = make_problem(grid, uniform_partition(90000, 1), GAMMA, MPI.COMM_SELF)
    assert not problem.use_tiles("auto") and problem.tiles is None
    assert not problem.use_tiles("rows")
    small = random_mdp_shard(70000, 2, 4, seed=3)  # scattered, but its values fit in L2: rows
    problem = make_problem(small, uniform_partition(70000, 1), GAMMA, MPI.COMM_SELF)
    assert not problem.use_tiles("auto") and problem.tiles is None
    S = TILES_MIN_VALUES + 1000
    rnd = random_mdp_shard(S, 2, 3, seed=3)
    problem = make_problem(rnd, uniform_partition(S, 1), GAMMA, MPI.COMM_SELF)
    assert problem.use_tiles("auto") and problem.tiles is not None
    problem.load_kernel("bellman_sweep_range")
    v_ext = np.random.default_rng(0).random(problem.n_ext)
    v_out, pol = np.empty(problem.n_local), np.zeros(problem.n_local, dtype=np.int64)
    problem.sweep_range(v_ext, v_out, pol)
    np.testing.assert_allclose(v_out, scipy_sweep(rnd, v_ext).max(axis=1), rtol=1e-13)
    with pytest.raises(ValueError, match="Jacobi"):
        problem.sweep_range(v_ext, v_ext, pol)  # Gauss-Seidel in place cannot run on tiles
