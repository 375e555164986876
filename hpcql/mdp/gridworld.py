"""Scalable slip gridworlds, generated shard-locally.

State ``s = row * cols + col``; actions 0 up, 1 right, 2 down, 3 left. The
intended move happens with probability ``1 - slip``, each perpendicular move
with ``slip / 2``; moves off the grid or into an obstacle stay put. Goals and
obstacles are absorbing. Reward of (s, a) is ``step_reward`` plus
``goal_reward`` times the probability of entering a goal. Obstacles come from a
counter-based hash of (seed, state), so every rank count sees the same world.
"""

from __future__ import annotations

import numpy as np

from hpcql.config import GridworldEnv
from hpcql.errors import BadInput
from hpcql.mdp.shard import MdpShard

MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)


def _hash_uniform(seed: int, states: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, state) mapped to [0, 1): a reproducible per-state coin."""
    with np.errstate(over="ignore"):
        z = states.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def goal_states(env: GridworldEnv) -> np.ndarray:
    """Global ids of the goal cells (validated)."""
    goals = env.goals or [[env.rows - 1, env.cols - 1]]
    ids = []
    for i, g in enumerate(goals):
        if len(g) != 2 or not (0 <= g[0] < env.rows and 0 <= g[1] < env.cols):
            raise BadInput(f"[env] goals[{i}]: {g} is not a [row, col] inside the {env.rows}x{env.cols} grid",
                           agreed=True)
        ids.append(g[0] * env.cols + g[1])
    return np.unique(np.array(ids, dtype=np.int64))


def cell_kinds(env: GridworldEnv, seed: int, states: np.ndarray, goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_goal, is_obstacle) for the given global states."""
    is_goal = np.isin(states, goals)
    is_obstacle = (_hash_uniform(seed, states) < env.obstacle_density) & ~is_goal & (states != 0)
    return is_goal, is_obstacle


def gridworld_shard(env: GridworldEnv, seed: int, row_start: int, row_stop: int) -> MdpShard:
    """Rows of states ``row_start:row_stop`` of the gridworld."""
    rows, cols, A = env.rows, env.cols, 4
    num_states = rows * cols
    goals = goal_states(env)
    states = np.arange(row_start, row_stop, dtype=np.int64)
    is_goal, is_obst = cell_kinds(env, seed, states, goals)
    absorbing = is_goal | is_obst
    r, c = states // cols, states % cols
    if env.slip > 0:
        outcome_dirs = np.array([[0, 1, 3], [1, 2, 0], [2, 3, 1], [3, 0, 2]])  # intended, then sideways
        outcome_p = np.array([1 - env.slip, env.slip / 2, env.slip / 2])
    else:
        outcome_dirs = np.arange(4).reshape(4, 1)
        outcome_p = np.array([1.0])
    k = outcome_p.size
    n = states.size
    nxt = np.empty((n, A, k), dtype=np.int64)
    for a in range(A):
        for j in range(k):
            d = MOVES[outcome_dirs[a, j]]
            nr, nc = r + d[0], c + d[1]
            inside = (nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols)
            target = np.where(inside, nr * cols + nc, states)
            t_goal, t_obst = cell_kinds(env, seed, target, goals)
            target = np.where(t_obst, states, target)
            nxt[:, a, j] = target
    nxt[absorbing] = states[absorbing, None, None]
    probs = np.broadcast_to(outcome_p, (n, A, k)).copy()
    enter_goal = np.isin(nxt, goals) & ~absorbing[:, None, None]
    entry_rewards = env.step_reward + env.goal_reward * enter_goal
    entry_rewards[absorbing] = 0.0
    rewards = (probs * entry_rewards).sum(axis=2)
    return MdpShard(
        num_states=num_states,
        num_actions=A,
        row_start=row_start,
        row_stop=row_stop,
        indptr=np.arange(0, n * A * k + 1, k, dtype=np.int64),
        indices=nxt.reshape(-1),
        probs=probs.reshape(-1),
        rewards=rewards,
        discount=env.discount,
        grid_shape=(rows, cols),
        entry_rewards=entry_rewards.reshape(-1),
    )
