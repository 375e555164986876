"""Counter-based random numbers: draw ``j`` of step ``ctr`` of agent ``id`` is a pure hash.

An agent carries only its id and step counter, so its random stream travels with
it when it migrates and never depends on which rank or in which order it runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
DRAWS_PER_STEP = 4
"""Independent draws available to one agent step (0 epsilon coin, 1 action, 2 successor, 3 restart)."""


@njit(cache=True, nogil=True, inline="always")
def mix64(z):
    """splitmix64 finaliser of a uint64."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def agent_key(seed_key, agent_id):
    """Per-agent stream key from the run key and the agent id."""
    return mix64(seed_key ^ mix64(np.uint64(agent_id) * _GOLDEN + _GOLDEN))


@njit(cache=True, nogil=True, inline="always")
def uniform(key, ctr, j):
    """Uniform [0, 1) for draw ``j`` of step ``ctr`` in stream ``key``."""
    z = mix64(key + (ctr * np.uint64(DRAWS_PER_STEP) + np.uint64(j)) * _GOLDEN)
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def seed_key(seed: int) -> np.uint64:
    """The run key of ``run.seed`` (numpy-side helper)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * _GOLDEN + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def uniform_array(key_seed, ids, ctrs, j, out):
    """Vectorised ``uniform`` for testing the stream (one draw per agent)."""
    for i in range(ids.shape[0]):
        out[i] = uniform(agent_key(key_seed, ids[i]), ctrs[i], j)
