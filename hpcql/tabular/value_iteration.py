"""Synchronous (Jacobi) value iteration: halo exchange, sweep, global residual."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import allreduce_yielding
from hpcql.console import ProgressTracker
from hpcql.faults import FaultInjector
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
    span: bool = False,
) -> Solution:
    """Jacobi sweeps until ``||V_{k+1} - V_k||_inf < tol (1-gamma) / (2 gamma)``.

    With ``span``: until ``span(V_{k+1} - V_k) < tol (1-gamma) / gamma``, then V
    is shifted by ``gamma/(1-gamma)`` times the mid-range of the last change
    (Puterman 6.6.12): the greedy policy is tol-optimal and ``||V - V*|| <= tol/2``.

    Resumes from ``control``'s checkpoint, if any: the sweeps that follow are
    bitwise those of an uninterrupted run, at any rank count.
    """
    comm, sh = problem.comm, problem.shard
    n = problem.n_local
    gamma = problem.gamma
    threshold = 2.0 * problem.stop_threshold(tol) if span else problem.stop_threshold(tol)
    v_ext = problem.new_ext()
    v0 = control.initial_values(sh.row_start, sh.row_stop)
    if v0 is not None:
        v_ext[:n] = v0
    v_new = np.empty(n, dtype=np.float64)
    policy = np.zeros(n, dtype=np.int64)
    local = np.zeros(4)  # -min change, max change, checkpoint due, stop signal: one max-reduction
    glob = np.zeros(4)
    residual = np.inf
    it = control.start_step
    while it < max_iterations:
        faults.tick(it)
        with timer.phase("exchange"):
            problem.halo.exchange(v_ext)
        with timer.phase("compute"):
            lo, hi = problem.sweep_range(v_ext, v_new, policy)
            local[0], local[1] = -lo, hi
            v_ext[:n] = v_new
        it += 1
        local[2:] = control.flags(it)
        with timer.phase("reduce"):
            allreduce_yielding(comm, local, glob, op=MPI.MAX)
        lo, hi = -float(glob[0]), float(glob[1])
        residual = hi - lo if span else max(hi, -lo)
        tracker.update(it, residual)
        if residual < threshold:
            if span:
                v_ext[:n] += gamma / (1.0 - gamma) * 0.5 * (hi + lo)
            break
        control.after(it, bool(glob[2]), bool(glob[3]), v_ext[:n], {"residual": residual})
    return Solution(v_ext[:n].copy(), it, residual, residual < threshold)
