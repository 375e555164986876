"""Gymnasium environments for DQN: per-rank vector envs, space checks, greedy evaluation."""

from __future__ import annotations

import functools
from typing import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from hpcql.config import GymEnv
from hpcql.errors import BadInput

EVAL_SEED_BASE = 1_000_000_007  # eval episode i uses seed EVAL_SEED_BASE + 1000 * run.seed + i


def make_env(env_cfg: GymEnv) -> gym.Env:
    """One environment; a bad id or option is ``BadInput`` naming ``[env]``."""
    try:
        return gym.make(env_cfg.id, **env_cfg.options)
    except gym.error.Error as exc:
        raise BadInput(f"[env] id: cannot make gymnasium env {env_cfg.id!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the env's constructor rejects an option with
        raise BadInput(f"[env] options: bad option for {env_cfg.id!r}: {type(exc).__name__}: {exc}") from None


def check_spaces(env: gym.Env, env_id: str) -> tuple[int, int]:
    """(flat observation size, number of actions); non-Box observations or non-Discrete actions are BadInput."""
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise BadInput(f"[env] id: {env_id!r} has action space {env.action_space}; dqn needs Discrete actions")
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise BadInput(f"[env] id: {env_id!r} has observation space {env.observation_space}; dqn needs a Box")
    return int(np.prod(env.observation_space.shape)), int(env.action_space.n)


def make_vector_env(env_cfg: GymEnv) -> SyncVectorEnv:
    """``num_envs`` copies, auto-reset in the same step (final obs in ``info``); picklable."""
    fns = [functools.partial(gym.make, env_cfg.id, **env_cfg.options) for _ in range(env_cfg.num_envs)]
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def rank_env_seeds(seed: int, rank: int, num_envs: int) -> list[int]:
    """Distinct env seeds per (seed, rank, env): the run seed offset by the rank."""
    base = (seed + rank) * 100_003
    return [base + i for i in range(num_envs)]


def eval_episode_ids(total: int, rank: int, size: int) -> list[int]:
    """The greedy evaluation episodes this rank plays (round robin over ranks)."""
    return list(range(rank, total, size))


def greedy_returns(env_cfg: GymEnv, policy: Callable[[np.ndarray], np.ndarray], episode_ids: list[int],
                   seed: int) -> np.ndarray:
    """Undiscounted returns of greedy episodes, all played side by side (batched policy calls).

    Episode ``i`` always uses the same env seed, so results depend on the network only,
    not on the rank count.
    """
    envs = [make_env(env_cfg) for _ in episode_ids]
    obs = np.stack([env.reset(seed=EVAL_SEED_BASE + 1000 * seed + i)[0] for env, i in zip(envs, episode_ids)])
    obs = obs.reshape(len(envs), -1).astype(np.float32)
    returns = np.zeros(len(envs))
    active = np.ones(len(envs), dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        actions = policy(obs[idx])
        for j, a in zip(idx, actions):
            o, r, term, trunc, _ = envs[j].step(int(a))
            returns[j] += float(r)
            obs[j] = np.asarray(o, dtype=np.float32).reshape(-1)
            if term or trunc:
                active[j] = False
    for env in envs:
        env.close()
    return returns
