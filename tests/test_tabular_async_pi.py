"""Async value iteration and policy iteration reach the sync / scipy optimum."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import REPO, hpcql, mpirun, write_toml
from hpcql.mdp import write_mdp
from hpcql.mdp.random_mdp import random_mdp_shard
from reference import evaluate_policy, load_mdp, optimal_values

TOL = 1e-6


@pytest.fixture(scope="module")
def mdp(tmp_path_factory):
    path = tmp_path_factory.mktemp("mdp") / "random.h5"
    sh = random_mdp_shard(600, 4, 6, seed=11, local_fraction=0.7, local_width=20)
    write_mdp(path, sh.indptr, sh.indices, sh.probs, sh.rewards, discount=0.97)
    P, R, gamma = load_mdp(path)
    v_star, _ = optimal_values(P, R, gamma)
    return path, v_star


def run(tmp_path, mdp_path, ranks, algo: str, extra: str = "", name: str = "r") -> np.ndarray:
    out = tmp_path / f"{name}{ranks}"
    cfg = write_toml(tmp_path / f"{name}{ranks}.toml", f"""
[run]
out_dir = "{out}"
progress = "none"
[env]
kind = "mdp-file"
path = "{mdp_path}"
[algo]
{algo}
tol = {TOL}
{extra}
""")
    res = hpcql(["run", str(cfg)], ranks=ranks, timeout=240)
    assert res.returncode == 0, res.stderr
    with h5py.File(out / "result.h5") as f:
        assert f.attrs["converged"]
        return f["V"][:]


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_async_vi_matches_sync_fixed_point(tmp_path, mdp, ranks):
    path, v_star = mdp
    v_async = run(tmp_path, path, ranks, 'name = "value-iteration"\nmode = "async"')
    v_sync = run(tmp_path, path, ranks, 'name = "value-iteration"\nmode = "sync"', name="s")
    assert np.max(np.abs(v_async - v_sync)) < TOL
    assert np.max(np.abs(v_async - v_star)) < TOL / 2


def test_async_vi_with_a_slow_rank(tmp_path, mdp):
    path, v_star = mdp
    v = run(tmp_path, path, 3, 'name = "value-iteration"\nmode = "async"', "[debug]\nslow_rank = 1\nslow_seconds = 0.01")
    assert np.max(np.abs(v - v_star)) < TOL / 2


def test_async_termination_does_not_stop_early(tmp_path):
    """A long chain with gamma near 1: values keep moving for thousands of sweeps.

    State i moves to i+1 (the last one is absorbing and pays 1 per step), so
    information crosses every rank boundary one sweep at a time per state and
    V*(i) = gamma^(S-1-i) / (1 - gamma).
    """
    S, gamma = 400, 0.995
    indptr = np.arange(S + 1)
    indices = np.minimum(np.arange(S) + 1, S - 1)
    rewards = np.zeros((S, 1))
    rewards[S - 1] = 1.0
    path = tmp_path / "chain.h5"
    # reverse the numbering so Gauss-Seidel order runs against the flow of information
    perm = np.arange(S)[::-1]
    write_mdp(path, indptr, perm[indices][perm], np.ones(S), rewards[perm], discount=gamma)
    v = run(tmp_path, path, 4, 'name = "value-iteration"\nmode = "async"', "[debug]\nslow_rank = 3\nslow_seconds = 0.002")
    exact = gamma ** (S - 1 - np.arange(S)) / (1 - gamma)
    assert np.max(np.abs(v[perm] - exact)) < TOL


@pytest.mark.parametrize("variant, krylov", [("optimistic", "gmres"), ("inexact", "gmres"), ("inexact", "bicgstab")])
@pytest.mark.parametrize("ranks", [1, 3])
def test_policy_iteration_reaches_the_optimum(tmp_path, mdp, variant, krylov, ranks):
    path, v_star = mdp
    v = run(tmp_path, path, ranks, f'name = "policy-iteration"\nvariant = "{variant}"\nkrylov = "{krylov}"')
    assert np.max(np.abs(v - v_star)) < TOL / 2


@pytest.mark.parametrize("method", ["gmres", "bicgstab"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_krylov_evaluation_matches_direct_solve(tmp_path, mdp, method, ranks):
    path, _ = mdp
    P, R, gamma = load_mdp(path)
    policy = np.random.default_rng(ranks).integers(0, R.shape[1], size=R.shape[0])
    np.save(tmp_path / "pol.npy", policy)
    exact = evaluate_policy(P, R, gamma, policy)
    res = mpirun([str(REPO / "tests/mpi_scripts/krylov_eval.py"), str(path), str(tmp_path / "pol.npy"),
                  str(tmp_path / "v.npy"), method, str(gamma)], ranks=ranks, timeout=120)
    assert res.returncode == 0, res.stderr
    v = np.load(tmp_path / "v.npy")
    assert np.max(np.abs(v - exact)) < 1e-8


def test_compact_policy_rows_give_the_policy_operator():
    """P^pi / r^pi extracted by ``policy_rows`` == the rows scipy picks, and sweeps agree bitwise."""
    import scipy.sparse as sp

    from hpcql.tabular.kernels import CSR, policy_rows

    sh = random_mdp_shard(300, 4, 5, seed=3)
    A, n = 4, 300
    policy = np.random.default_rng(0).integers(0, A, n)
    ip, cols, probs, r_pi = policy_rows(sh.indptr, sh.indices.astype(np.int32), sh.probs, sh.rewards, policy)
    P = sp.csr_matrix((sh.probs, sh.indices, sh.indptr), shape=(n * A, n))
    dense_pi = P[np.arange(n) * A + policy].toarray()
    np.testing.assert_array_equal(sp.csr_matrix((probs, cols, ip), shape=(n, n)).toarray(), dense_pi)
    np.testing.assert_array_equal(r_pi[:, 0], sh.rewards[np.arange(n), policy])
    v = np.random.default_rng(1).random(n)
    a, b = v.copy(), v.copy()
    CSR.policy_sweep(sh.indptr, sh.indices.astype(np.int32), sh.probs, sh.rewards, a, a, 0.9, policy, True)
    CSR.policy_sweep(ip, cols, probs, r_pi, b, b, 0.9, np.zeros(n, dtype=np.int64), True)
    assert a.tobytes() == b.tobytes()
