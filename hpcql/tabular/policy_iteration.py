"""Distributed policy iteration: optimistic (k sweeps on P^pi) and inexact (Krylov).

Each outer iteration makes one in-place Gauss-Seidel Bellman sweep (greedy
improvement; its largest change bounds ``||T V - V||`` by ``gamma`` times itself,
so the value-iteration stopping rule applies), then
evaluates the greedy policy: ``eval_sweeps`` Gauss-Seidel sweeps (alternating
direction, halo exchange between sweeps) of ``r^pi + gamma P^pi V`` (optimistic), or a GMRES/BiCGStab solve of ``(I - gamma P^pi) V =
r^pi`` to a tolerance proportional to the current Bellman residual (inexact,
as in madupite).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import allreduce_yielding
from hpcql.config import PolicyIterationAlgo
from hpcql.console import ProgressTracker
from hpcql.faults import FaultInjector
from hpcql.tabular.control import RunControl
from hpcql.tabular.kernels import policy_rows
from hpcql.tabular.krylov import KrylovResult, bicgstab, gmres
from hpcql.tabular.problem import ShardedProblem
from hpcql.tabular.solution import Solution
from hpcql.timing import PhaseTimer


class PolicyOperator:
    """``(I - gamma P^pi)`` and ``r^pi`` of a fixed policy on a sharded problem."""

    def __init__(self, problem: ShardedProblem, policy: np.ndarray, timer: PhaseTimer | None = None) -> None:
        self.problem = problem
        self.policy = policy
        self.timer = timer
        self.x_ext = problem.new_ext()
        self.matvecs = 0

    def rhs(self) -> np.ndarray:
        sh = self.problem.shard
        return sh.rewards[np.arange(sh.n_local), self.policy].copy()

    def __call__(self, x: np.ndarray, y: np.ndarray) -> None:
        p, n = self.problem, self.problem.n_local
        self.x_ext[:n] = x
        if self.timer is not None:
            with self.timer.phase("exchange"):
                p.halo.exchange(self.x_ext)
            with self.timer.phase("compute"):
                p.policy_matvec(self.x_ext, self.policy, y)
        else:
            p.halo.exchange(self.x_ext)
            p.policy_matvec(self.x_ext, self.policy, y)
        self.matvecs += 1


def evaluate_policy(problem: ShardedProblem, policy: np.ndarray, atol: float, x0: np.ndarray | None = None,
                    method: str = "gmres", restart: int = 30, max_iter: int = 5000,
                    timer: PhaseTimer | None = None) -> KrylovResult:
    """Solve ``(I - gamma P^pi) V = r^pi`` to ``||residual||_2 <= atol`` (collective)."""
    op = PolicyOperator(problem, policy, timer)
    b = op.rhs()
    x0 = b.copy() if x0 is None else x0
    if method == "bicgstab":
        return bicgstab(problem.comm, op, b, x0, atol, max_iter)
    return gmres(problem.comm, op, b, x0, atol, restart, max_iter)


def policy_iteration(
    problem: ShardedProblem,
    algo: PolicyIterationAlgo,
    timer: PhaseTimer,
    tracker: ProgressTracker,
    faults: FaultInjector,
    control: RunControl,
) -> Solution:
    """Optimistic or inexact policy iteration until the VI stopping rule holds.

    Checkpoints (and resumes) at outer-iteration boundaries, holding V only.
    """
    comm, sh = problem.comm, problem.shard
    n = problem.n_local
    threshold = problem.stop_threshold(algo.tol)
    v_ext = problem.new_ext()
    v0 = control.initial_values(sh.row_start, sh.row_stop)
    if v0 is not None:
        v_ext[:n] = v0
    policy = np.zeros(n, dtype=np.int64)
    only_row = np.zeros(n, dtype=np.int64)  # the compact P^pi has one row per state: "action" 0
    local, glob = np.zeros(3), np.zeros(3)  # residual, checkpoint due, stop signal
    history: list[dict[str, float]] = list(control.start_meta.get("history", []))
    inner_total = int(control.start_meta.get("inner_total", 0))
    outer = control.start_step
    residual = np.inf
    while outer < algo.max_iterations:
        faults.tick(outer)
        with timer.phase("exchange"):
            problem.halo.exchange(v_ext)
        with timer.phase("compute"):  # improvement: one in-place Gauss-Seidel Bellman sweep
            local[0] = problem.sweep(v_ext, v_ext, policy, outer % 2 == 1)
        local[1:] = control.flags(outer + 1)
        with timer.phase("reduce"):
            allreduce_yielding(comm, local, glob, op=MPI.MAX)
        residual = float(glob[0])
        outer += 1
        if residual < threshold:
            history.append({"residual": residual, "inner": 0})
            tracker.update(outer, residual)
            break
        if algo.variant == "optimistic":
            inner = 0
            with timer.phase("compute"):
                pi_indptr, pi_cols, pi_probs, pi_rewards = policy_rows(sh.indptr, problem.cols, problem.probs,
                                                                       sh.rewards, policy)
            for k in range(algo.eval_sweeps):
                with timer.phase("exchange"):
                    problem.halo.exchange(v_ext)
                with timer.phase("compute"):  # Gauss-Seidel in place, alternating direction
                    problem.kernels.policy_sweep(pi_indptr, pi_cols, pi_probs, pi_rewards, v_ext, v_ext,
                                                 problem.gamma, only_row, k % 2 == 1)
                inner += 1
        else:
            # ||linear residual||_2 <= factor * ||T V - V||_inf bounds its sup norm the same way
            atol = algo.inner_rtol_factor * residual
            res = evaluate_policy(problem, policy, atol, x0=v_ext[:n].copy(), method=algo.krylov,
                                  restart=algo.krylov_restart, max_iter=algo.max_inner, timer=timer)
            v_ext[:n] = res.x
            inner = res.iterations
        inner_total += inner
        history.append({"residual": residual, "inner": inner})
        tracker.update(outer, residual, inner=inner)
        control.after(outer, bool(glob[1]), bool(glob[2]), v_ext[:n],
                      {"history": history, "inner_total": inner_total})
    return Solution(v_ext[:n].copy(), outer, residual, residual < threshold, history,
                    extra={"inner_iterations": inner_total, "variant": algo.variant,
                           "sweeps": outer + (inner_total if algo.variant == "optimistic" else 0)})
