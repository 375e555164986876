"""n-step returns over vectorised envs: turn 1-step transitions into n-step ones."""

from __future__ import annotations

from typing import Any

import numpy as np


class NStepAccumulator:
    """Per-env windows of the last ``n`` (obs, action, reward).

    A full window emits ``(obs_0, a_0, sum_i gamma^i r_i, obs_n, terminal, gamma^n)``;
    at an episode end every pending start is flushed with its shorter return. A
    truncated episode bootstraps from its final observation (terminal = 0).
    """

    def __init__(self, num_envs: int, n: int, gamma: float, obs_dim: int) -> None:
        self.n, self.gamma = n, gamma
        self.obs = np.zeros((num_envs, n, obs_dim), dtype=np.float32)
        self.action = np.zeros((num_envs, n), dtype=np.int64)
        self.reward = np.zeros((num_envs, n), dtype=np.float64)
        self.count = np.zeros(num_envs, dtype=np.int64)
        self.powers = gamma ** np.arange(n + 1)

    def push(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray) -> dict[str, np.ndarray]:
        """Record one vector step; returns the transitions it completes."""
        if self.n == 1:  # every step completes one transition per env: no window, no Python loop
            return self._push_one_step(obs, action, reward, next_obs, terminated)
        return self._push_window(obs, action, reward, next_obs, terminated, truncated)

    def _push_one_step(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                       terminated: np.ndarray) -> dict[str, np.ndarray]:
        """n = 1, vectorised: exactly what ``_push_window`` emits for a window of one."""
        return {
            "obs": np.array(obs, dtype=np.float32).reshape(len(action), -1),
            "action": np.array(action, dtype=np.int64),
            "ret": np.asarray(reward, dtype=np.float64).astype(np.float32),
            "next_obs": np.array(next_obs, dtype=np.float32).reshape(len(action), -1),
            "done": np.asarray(terminated, dtype=np.float32),
            "discount": np.full(len(action), self.powers[1], dtype=np.float32),
        }

    def _push_window(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                     terminated: np.ndarray, truncated: np.ndarray) -> dict[str, np.ndarray]:
        """The general path: per-env windows, flushed at episode ends."""
        out: dict[str, list] = {k: [] for k in ("obs", "action", "ret", "next_obs", "done", "discount")}
        for e in range(len(action)):
            c = self.count[e]
            self.obs[e, c], self.action[e, c], self.reward[e, c] = obs[e], action[e], reward[e]
            c += 1
            ended = bool(terminated[e] or truncated[e])
            starts = range(c) if ended else ([0] if c == self.n else [])
            for s in starts:
                k = c - s
                out["obs"].append(self.obs[e, s].copy())
                out["action"].append(int(self.action[e, s]))
                out["ret"].append(float(np.dot(self.reward[e, s:c], self.powers[:k])))
                out["next_obs"].append(next_obs[e])
                out["done"].append(float(terminated[e]))
                out["discount"].append(self.powers[k])
            if ended:
                c = 0
            elif c == self.n:
                self.obs[e, :-1], self.action[e, :-1], self.reward[e, :-1] = \
                    self.obs[e, 1:].copy(), self.action[e, 1:].copy(), self.reward[e, 1:].copy()
                c -= 1
            self.count[e] = c
        dim = self.obs.shape[2]
        return {
            "obs": np.array(out["obs"], dtype=np.float32).reshape(-1, dim),
            "action": np.array(out["action"], dtype=np.int64),
            "ret": np.array(out["ret"], dtype=np.float32),
            "next_obs": np.array(out["next_obs"], dtype=np.float32).reshape(-1, dim),
            "done": np.array(out["done"], dtype=np.float32),
            "discount": np.array(out["discount"], dtype=np.float32),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"obs": self.obs.copy(), "action": self.action.copy(), "reward": self.reward.copy(),
                "count": self.count.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("obs", "action", "reward", "count"):
            getattr(self, k)[...] = state[k]


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """Epsilon after ``step`` global env steps: linear from ``start`` to ``end``, then flat."""
    frac = min(max(step, 0) / decay_steps, 1.0)
    return start + frac * (end - start)
