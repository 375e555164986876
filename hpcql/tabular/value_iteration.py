"""Synchronous (Jacobi) value iteration: halo exchange, sweep, global residual."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.console import ProgressTracker
from hpcql.faults import FaultInjector
from hpcql.tabular.kernels import bellman_sweep
from hpcql.tabular.problem import ShardedProblem
from hpcql.tabular.solution import Solution
from hpcql.timing import PhaseTimer


def value_iteration_sync(
    problem: ShardedProblem,
    tol: float,
    max_iterations: int,
    timer: PhaseTimer,
    tracker: ProgressTracker,
    faults: FaultInjector,
    v0: np.ndarray | None = None,
    start_iteration: int = 0,
    on_iteration=None,
) -> Solution:
    """Jacobi sweeps until ``||V_{k+1} - V_k||_inf < tol (1-gamma) / (2 gamma)``.

    ``on_iteration(iteration, v_local)`` is called after each sweep (checkpoints).
    """
    comm, sh = problem.comm, problem.shard
    n = problem.n_local
    threshold = problem.stop_threshold(tol)
    v_ext = problem.new_ext()
    if v0 is not None:
        v_ext[:n] = v0
    v_new = np.empty(n, dtype=np.float64)
    policy = np.zeros(n, dtype=np.int64)
    local = np.zeros(1)
    glob = np.zeros(1)
    residual = np.inf
    it = start_iteration
    while it < max_iterations:
        faults.tick(it)
        with timer.phase("exchange"):
            problem.halo.exchange(v_ext)
        with timer.phase("compute"):
            local[0] = bellman_sweep(sh.indptr, problem.cols, problem.probs, sh.rewards, v_ext, v_new,
                                     problem.gamma, policy)
            v_ext[:n] = v_new
        with timer.phase("reduce"):
            comm.Allreduce(local, glob, op=MPI.MAX)
        residual = float(glob[0])
        it += 1
        tracker.update(it, residual)
        if on_iteration is not None:
            on_iteration(it, v_ext[:n])
        if residual < threshold:
            break
    return Solution(v_ext[:n].copy(), it, residual, residual < threshold)
