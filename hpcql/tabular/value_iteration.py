"""Synchronous (Jacobi) value iteration: halo exchange, sweep, global residual."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.console import ProgressTracker
from hpcql.faults import FaultInjector
from hpcql.tabular.kernels import bellman_sweep
from hpcql.tabular.control import RunControl
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
    control: RunControl,
) -> Solution:
    """Jacobi sweeps until ``||V_{k+1} - V_k||_inf < tol (1-gamma) / (2 gamma)``.

    Resumes from ``control``'s checkpoint, if any: the sweeps that follow are
    bitwise those of an uninterrupted run, at any rank count.
    """
    comm, sh = problem.comm, problem.shard
    n = problem.n_local
    threshold = problem.stop_threshold(tol)
    v_ext = problem.new_ext()
    v0 = control.initial_values(sh.row_start, sh.row_stop)
    if v0 is not None:
        v_ext[:n] = v0
    v_new = np.empty(n, dtype=np.float64)
    policy = np.zeros(n, dtype=np.int64)
    local = np.zeros(3)  # residual, checkpoint due, stop signal: one max-reduction
    glob = np.zeros(3)
    residual = np.inf
    it = control.start_step
    while it < max_iterations:
        faults.tick(it)
        with timer.phase("exchange"):
            problem.halo.exchange(v_ext)
        with timer.phase("compute"):
            local[0] = bellman_sweep(sh.indptr, problem.cols, problem.probs, sh.rewards, v_ext, v_new,
                                     problem.gamma, policy)
            v_ext[:n] = v_new
        it += 1
        local[1:] = control.flags(it)
        with timer.phase("reduce"):
            comm.Allreduce(local, glob, op=MPI.MAX)
        residual = float(glob[0])
        tracker.update(it, residual)
        if residual < threshold:
            break
        control.after(it, bool(glob[1]), bool(glob[2]), v_ext[:n], {"residual": residual})
    return Solution(v_ext[:n].copy(), it, residual, residual < threshold)
