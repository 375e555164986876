"""A rank's replay shard: a fixed-capacity ring buffer of n-step transitions (numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np

FIELDS = ("obs", "action", "ret", "next_obs", "done", "discount")


class ReplayShard:
    """Local transitions ``(obs, action, n-step return, next_obs, terminal, gamma^k)``.

    Sampling is uniform with replacement, driven by the caller's numpy Generator.
    """

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.ret = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.done = np.zeros(capacity, dtype=np.float32)
        self.discount = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Append a batch of transitions (overwrites the oldest when full)."""
        n = len(batch["action"])
        if n == 0:
            return
        idx = (self.pos + np.arange(n)) % self.capacity
        for name in FIELDS:
            getattr(self, name)[idx] = batch[name]
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise RuntimeError("sampling from an empty replay shard")
        idx = rng.integers(0, self.size, size=batch_size)
        return {name: getattr(self, name)[idx] for name in FIELDS}

    def state_dict(self) -> dict[str, Any]:
        """Contents (only the filled part) and pointers."""
        out: dict[str, Any] = {name: getattr(self, name)[: self.size].copy() for name in FIELDS}
        out |= {"pos": self.pos, "size": self.size, "capacity": self.capacity}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity {state['capacity']} != {self.capacity}")
        self.size, self.pos = int(state["size"]), int(state["pos"])
        for name in FIELDS:
            getattr(self, name)[: self.size] = state[name]
