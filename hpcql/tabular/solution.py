"""What a tabular solver returns, and the final Q / greedy policy from V."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpcql.tabular.kernels import greedy_policy
from hpcql.tabular.problem import ShardedProblem


@dataclass
class Solution:
    """This rank's part of a solved MDP, plus convergence facts (global)."""

    v_local: np.ndarray
    iterations: int
    residual: float
    converged: bool
    history: list[dict[str, float]] = field(default_factory=list)
    """Per outer iteration: residual and, for policy iteration, inner iterations."""
    extra: dict[str, float] = field(default_factory=dict)


def final_q(problem: ShardedProblem, v_local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Q, V, greedy policy) of this rank's rows from the converged V (one exchange)."""
    v_ext = problem.new_ext()
    v_ext[: problem.n_local] = v_local
    problem.halo.exchange(v_ext)
    sh = problem.shard
    q = np.empty((sh.n_local, sh.num_actions), dtype=np.float64)
    problem.q_values(v_ext, q)
    return q, q.max(axis=1) if q.size else np.zeros(sh.n_local), greedy_policy(q)
