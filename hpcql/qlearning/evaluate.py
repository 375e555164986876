"""Exact values where the model is known: the greedy policy's value and the optimum.

Both are distributed solves on the same shard and halo plan as the learner
(collective): iterated ``policy_sweep`` for V^pi (warm-started from the last
evaluation), the synchronous value-iteration solver for V*.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import allreduce_yielding
from hpcql.redistribute import RowMover
from hpcql.tabular.problem import ShardedProblem
from hpcql.timing import PhaseTimer


class Evaluator:
    """Evaluates greedy policies of a Q shard against the optimal values."""

    def __init__(self, problem: ShardedProblem, tol: float, max_sweeps: int, report_states: list[int],
                 timer: PhaseTimer) -> None:
        self.problem = problem
        self.tol = tol
        self.max_sweeps = max_sweeps
        self.report_states = np.asarray(report_states, dtype=np.int64)
        self.timer = timer
        self.v_pi_ext = problem.new_ext()
        self.v_new = np.empty(problem.n_local)
        self.v_star = self.optimal_value()
        self.v_star_report = self.at_states(self.v_star)

    @property
    def v_pi(self) -> np.ndarray:
        """The warm start of the next policy evaluation on the local rows (a view; checkpointed)."""
        return self.v_pi_ext[: self.problem.n_local]

    def repartition(self, problem: ShardedProblem, mover: RowMover) -> None:
        """Carry V* and the warm-start V^pi over to ``problem``'s partition (collective)."""
        v_pi = mover.rows(self.v_pi_ext[: self.problem.n_local])
        self.problem = problem
        self.v_star = mover.rows(self.v_star)
        self.v_pi_ext = problem.new_ext()
        self.v_pi_ext[: problem.n_local] = v_pi
        self.v_new = np.empty(problem.n_local)

    def _sweeps(self, sweep, v_ext: np.ndarray) -> np.ndarray:
        """Jacobi sweeps ``sweep(v_ext, v_new) -> max change`` until V is within ``tol`` (collective)."""
        p = self.problem
        n = p.n_local
        threshold = self.tol * (1.0 - p.gamma) / p.gamma
        local, glob = np.zeros(1), np.zeros(1)
        for _ in range(self.max_sweeps):
            with self.timer.phase("exchange"):
                p.halo.exchange(v_ext)
            with self.timer.phase("compute"):
                local[0] = sweep(v_ext, self.v_new)
                v_ext[:n] = self.v_new
            with self.timer.phase("reduce"):
                allreduce_yielding(p.comm, local, glob, op=MPI.MAX)
            if glob[0] < threshold:
                break
        return v_ext[:n].copy()

    def optimal_value(self) -> np.ndarray:
        """V* on the local rows by value iteration (the shared Bellman kernel), within ``tol``."""
        p = self.problem
        greedy = np.zeros(p.n_local, dtype=np.int64)
        return self._sweeps(lambda v_ext, v_out: p.sweep(v_ext, v_out, greedy), p.new_ext())

    def at_states(self, v_local: np.ndarray) -> np.ndarray:
        """Global values of ``report_states`` (collective)."""
        sh = self.problem.shard
        mine = (self.report_states >= sh.row_start) & (self.report_states < sh.row_stop)
        local = np.zeros(self.report_states.size)
        local[mine] = v_local[self.report_states[mine] - sh.row_start]
        out = np.zeros_like(local)
        self.problem.comm.Allreduce(local, out, op=MPI.SUM)
        return out

    def policy_value(self, policy: np.ndarray) -> np.ndarray:
        """V^pi on the local rows to within ``tol`` (collective); warm start from the last call."""
        p = self.problem
        return self._sweeps(lambda v_ext, v_out: p.policy_sweep(v_ext, v_out, policy), self.v_pi_ext)

    def evaluate(self, q: np.ndarray) -> dict[str, float]:
        """Greedy policy of ``q``: its value and relative gap at the first report state, mean gap."""
        policy = np.argmax(q, axis=1).astype(np.int64) if q.size else np.zeros(0, dtype=np.int64)
        v_pi = self.policy_value(policy)
        at = self.at_states(v_pi)
        gap_sum = np.array([float(np.sum(self.v_star - v_pi))])
        tot = np.zeros(1)
        self.problem.comm.Allreduce(gap_sum, tot, op=MPI.SUM)
        star = float(self.v_star_report[0])
        return {
            "greedy_value_start": float(at[0]),
            "optimal_value_start": star,
            "gap_start": (star - float(at[0])) / abs(star) if star != 0 else star - float(at[0]),
            "mean_gap": float(tot[0]) / self.problem.shard.num_states,
        }
