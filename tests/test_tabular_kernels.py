"""Bellman kernels: the fixed-width (unrolled) and general CSR layouts against scipy.sparse."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcql.config import GridworldEnv
from hpcql.mdp.gridworld import gridworld_shard
from hpcql.mdp.random_mdp import random_mdp_shard
from hpcql.tabular.kernels import MAX_WIDTH, NEAR_ENTRIES, kernels_for, policy_rows, row_width, scattered_gathers

GAMMA = 0.95


def shards():
    return {"random-6": random_mdp_shard(500, 4, 6, seed=5),
            "gridworld": gridworld_shard(GridworldEnv(kind="gridworld", rows=20, cols=25, slip=0.1), 0, 0, 500)}


@pytest.mark.parametrize("name", ["random-6", "gridworld"])
def test_fixed_width_and_csr_kernels_match_scipy(name):
    sh = shards()[name]
    S, A = sh.num_states, sh.num_actions
    width = row_width(sh.indptr)
    assert width == {"random-6": 6, "gridworld": 3}[name]
    P = sp.csr_matrix((sh.probs, sh.indices, sh.indptr), shape=(S * A, S))
    cols = sh.indices.astype(np.int32)
    v = np.random.default_rng(1).random(S)
    q_ref = sh.rewards + GAMMA * (P @ v).reshape(S, A)
    policy = np.random.default_rng(2).integers(0, A, S)
    rows = np.arange(S) * A + policy
    pol_ref = sh.rewards[np.arange(S), policy] + GAMMA * (P[rows] @ v)
    gs_ref, pgs_ref = v.copy(), v.copy()  # backward Gauss-Seidel, one state at a time with scipy rows
    for state in range(S - 1, -1, -1):
        gs_ref[state] = (sh.rewards[state] + GAMMA * (P[state * A:(state + 1) * A] @ gs_ref)).max()
        pgs_ref[state] = sh.rewards[state, policy[state]] + GAMMA * (P[rows[state]] @ pgs_ref)[0]
    outputs = []
    for k in (kernels_for(width), kernels_for(0), kernels_for(width, True), kernels_for(0, True)):
        v_out, greedy = np.empty(S), np.empty(S, dtype=np.int64)
        change = k.bellman_sweep(sh.indptr, cols, sh.probs, sh.rewards, v, v_out, GAMMA, greedy)
        np.testing.assert_allclose(v_out, q_ref.max(axis=1), rtol=1e-13)
        np.testing.assert_array_equal(greedy, q_ref.argmax(axis=1))
        assert change == pytest.approx(np.abs(q_ref.max(axis=1) - v).max(), rel=1e-12)
        lo, hi = k.bellman_sweep_range(sh.indptr, cols, sh.probs, sh.rewards, v, v_out, GAMMA, greedy)
        assert (lo, hi) == pytest.approx(((v_out - v).min(), (v_out - v).max()), rel=1e-12)
        q = np.empty((S, A))
        k.q_values(sh.indptr, cols, sh.probs, sh.rewards, v, GAMMA, q)
        np.testing.assert_allclose(q, q_ref, rtol=1e-13)
        pv = np.empty(S)
        k.policy_sweep(sh.indptr, cols, sh.probs, sh.rewards, v, pv, GAMMA, policy)
        np.testing.assert_allclose(pv, pol_ref, rtol=1e-13)
        y = np.empty(S)
        k.policy_matvec(sh.indptr, cols, sh.probs, v, GAMMA, policy, y)
        np.testing.assert_allclose(y, v - GAMMA * (P[rows] @ v), rtol=1e-12, atol=1e-14)
        # compact P^pi rows keep the layout: the same kernels sweep them
        ip, pc, pp, pr = policy_rows(sh.indptr, cols, sh.probs, sh.rewards, policy)
        cv = np.empty(S)
        k.policy_sweep(ip, pc, pp, pr, v, cv, GAMMA, np.zeros(S, dtype=np.int64))
        assert cv.tobytes() == pv.tobytes()
        # Gauss-Seidel, backwards: in place
        gs = v.copy()
        k.bellman_sweep(sh.indptr, cols, sh.probs, sh.rewards, gs, gs, GAMMA, greedy, True)
        np.testing.assert_allclose(gs, gs_ref, rtol=1e-13)
        pgs = v.copy()
        k.policy_sweep(sh.indptr, cols, sh.probs, sh.rewards, pgs, pgs, GAMMA, policy, True)
        np.testing.assert_allclose(pgs, pgs_ref, rtol=1e-13)
        outputs.append((v_out, q, pv, y, gs))
    for variants in zip(*outputs):  # same summation order, hints change nothing: bitwise equal
        assert len({out.tobytes() for out in variants}) == 1


def test_row_width_only_for_uniform_rows():
    assert row_width(np.array([0, 3, 6, 9])) == 3
    assert row_width(np.array([0, 3, 5, 8])) == 0
    assert row_width(np.array([0, 0, 0])) == 0
    assert row_width(np.array([0])) == 0
    assert row_width(np.arange(0, 4 * (MAX_WIDTH + 1), MAX_WIDTH + 1)) == 0
    with pytest.raises(ValueError):
        kernels_for(MAX_WIDTH + 1)


def test_prefetch_hints_only_where_gathers_are_scattered():
    """A uniform random MDP gathers all over V; a gridworld's neighbours are within a row of it."""
    n = 4 * NEAR_ENTRIES
    rnd = random_mdp_shard(n, 2, 4, seed=3)
    assert scattered_gathers(rnd.indptr, rnd.indices, 2)
    banded = random_mdp_shard(n, 2, 4, seed=3, local_fraction=0.9)
    assert not scattered_gathers(banded.indptr, banded.indices, 2)
    grid = gridworld_shard(GridworldEnv(kind="gridworld", rows=200, cols=300, slip=0.1), 0, 0, 60000)
    assert not scattered_gathers(grid.indptr, grid.indices, 4)
    assert not scattered_gathers(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32), 4)


@pytest.mark.parametrize("kernel", ["bellman_sweep_range", "bellman_sweep"])
@pytest.mark.parametrize("float32", [False, True])
def test_problem_loads_the_sweep_kernel_for_the_solvers_argument_types(float32, kernel):
    """``load_kernel`` (the solvers' set-up) loads the kernel; the solvers' first sweep then adds no
    signature (a compile or cache load there would be timed as that sweep's compute)."""
    from dataclasses import replace

    from mpi4py import MPI

    from hpcql.partition import uniform_partition
    from hpcql.tabular.kernels import _compile_kernels
    from hpcql.tabular.problem import make_problem

    sh = shards()["gridworld"]
    problem = make_problem(sh, uniform_partition(sh.num_states, 1), GAMMA, MPI.COMM_SELF, float32)
    fresh = _compile_kernels.__wrapped__(problem.kernels.width, False)  # dispatchers nothing has called yet
    problem = replace(problem, kernels=fresh)
    dispatcher = getattr(fresh, kernel)
    assert dispatcher.signatures == []
    problem.load_kernel(kernel)
    assert len(dispatcher.signatures) == 1
    v_ext, v_new, policy = problem.new_ext(), np.empty(problem.n_local), np.zeros(problem.n_local, dtype=np.int64)
    if kernel == "bellman_sweep_range":
        problem.sweep_range(v_ext, v_new, policy)  # as value_iteration_sync calls it
    else:
        problem.sweep(v_ext, v_ext, policy, True)  # as async VI and PI's improvement call it
    assert len(dispatcher.signatures) == 1
