"""Gymnasium toy-text environments (FrozenLake, Taxi, CliffWalking) through their model.

``env.unwrapped.P[s][a]`` lists ``(prob, next_state, reward, terminated)``. A
terminating transition leads to an absorbing state; where its target is not
absorbing in ``P`` (Taxi's drop-off), one extra absorbing state ``S`` is added.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from hpcql.config import GymTabularEnv
from hpcql.errors import BadInput
from hpcql.mdp.shard import MdpShard


def _model(env_cfg: GymTabularEnv) -> tuple[dict, int, int, tuple[int, int] | None]:
    try:
        env = gym.make(env_cfg.id, **env_cfg.options)
    except Exception as exc:  # noqa: BLE001 - gymnasium raises many types for bad ids/kwargs
        raise BadInput(f"[env] id: cannot make gymnasium env {env_cfg.id!r} with options {env_cfg.options}: {exc}",
                       agreed=True) from None
    base = env.unwrapped
    P = getattr(base, "P", None)
    if P is None or not hasattr(env.observation_space, "n") or not hasattr(env.action_space, "n"):
        raise BadInput(f"[env] id: {env_cfg.id!r} has no tabular model (env.unwrapped.P with Discrete spaces)",
                       agreed=True)
    grid = None
    desc = getattr(base, "desc", None)
    if desc is not None and np.asarray(desc).ndim == 2:
        grid = tuple(np.asarray(desc).shape)
    elif hasattr(base, "shape") and len(getattr(base, "shape")) == 2:
        grid = tuple(base.shape)
    S, A = int(env.observation_space.n), int(env.action_space.n)
    env.close()
    return P, S, A, grid


def _absorbing(P: dict, s: int) -> bool:
    return all(len(P[s][a]) > 0 and all(t[1] == s for t in P[s][a]) for a in P[s])


def gym_tabular_shard(env_cfg: GymTabularEnv, row_start: int | None = None, row_stop: int | None = None,
                      ) -> MdpShard:
    """Rows ``row_start:row_stop`` (default: all) of the environment's MDP."""
    P, S, A, grid = _model(env_cfg)
    needs_terminal = any(
        done and not _absorbing(P, nxt)
        for s in range(S) for a in range(A) for (_, nxt, _, done) in P[s][a]
    )
    total = S + 1 if needs_terminal else S
    lo = 0 if row_start is None else row_start
    hi = total if row_stop is None else row_stop
    indptr = [0]
    indices: list[int] = []
    probs: list[float] = []
    entry_rewards: list[float] = []
    rewards = np.zeros((hi - lo, A))
    for s in range(lo, hi):
        for a in range(A):
            entries: dict[int, float] = {}
            gains: dict[int, float] = {}  # sum of p * r per next state
            if s == S:  # the added absorbing terminal state
                entries[S], gains[S] = 1.0, 0.0
            else:
                for p, nxt, r, done in P[s][a]:
                    tgt = S if (done and needs_terminal and not _absorbing(P, nxt)) else int(nxt)
                    entries[tgt] = entries.get(tgt, 0.0) + float(p)
                    gains[tgt] = gains.get(tgt, 0.0) + float(p) * float(r)
                    rewards[s - lo, a] += float(p) * float(r)
            indices.extend(entries)
            probs.extend(entries.values())
            entry_rewards.extend(gains[t] / entries[t] if entries[t] > 0 else 0.0 for t in entries)
            indptr.append(len(indices))
    return MdpShard(
        num_states=total,
        num_actions=A,
        row_start=lo,
        row_stop=hi,
        indptr=np.array(indptr, dtype=np.int64),
        indices=np.array(indices, dtype=np.int64),
        probs=np.array(probs, dtype=np.float64),
        rewards=rewards,
        discount=env_cfg.discount,
        grid_shape=grid if not needs_terminal else None,
        meta={"gym_id": env_cfg.id, "terminal_state_added": needs_terminal},
        entry_rewards=np.array(entry_rewards, dtype=np.float64),
    )
