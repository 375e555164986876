"""Independent reference solutions with scipy (no hpcql solver code involved)."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve


def load_mdp(path) -> tuple[sp.csr_matrix, np.ndarray, float | None]:
    """(P as (S*A) x S CSR, rewards (S, A), discount) straight from the file."""
    with h5py.File(path, "r") as f:
        S, A = int(f.attrs["num_states"]), int(f.attrs["num_actions"])
        P = sp.csr_matrix((f["transitions/probs"][:], f["transitions/indices"][:], f["transitions/indptr"][:]),
                          shape=(S * A, S))
        return P, f["rewards"][:], (float(f.attrs["discount"]) if "discount" in f.attrs else None)


def evaluate_policy(P: sp.csr_matrix, R: np.ndarray, gamma: float, policy: np.ndarray) -> np.ndarray:
    """Exact V^pi: sparse direct solve of (I - gamma P^pi) V = r^pi."""
    S, A = R.shape
    rows = np.arange(S) * A + policy
    P_pi = P[rows]
    return spsolve((sp.identity(S, format="csc") - gamma * P_pi).tocsc(), R[np.arange(S), policy])


def optimal_values(P: sp.csr_matrix, R: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact optimum by Howard policy iteration with direct solves: (V*, policy*)."""
    S, A = R.shape
    policy = np.zeros(S, dtype=np.int64)
    for _ in range(1000):
        V = evaluate_policy(P, R, gamma, policy)
        Q = R + gamma * (P @ V).reshape(S, A)
        best = Q.max(axis=1)
        # keep the current action unless another is strictly better (avoids cycling on ties)
        improve = best > Q[np.arange(S), policy] + 1e-12 * (1 + np.abs(best))
        if not improve.any():
            return V, policy
        policy = np.where(improve, Q.argmax(axis=1), policy)
    raise RuntimeError("reference policy iteration did not converge")


def gym_toy_text_model(env_id: str, **kwargs) -> tuple[sp.csr_matrix, np.ndarray]:
    """(P, R) of a gymnasium toy-text env built straight from ``env.unwrapped.P``."""
    env = gym.make(env_id, **kwargs)
    P_dict, S, A = env.unwrapped.P, env.observation_space.n, env.action_space.n
    P = sp.lil_matrix((S * A, S))
    R = np.zeros((S, A))
    for s in range(S):
        for a in range(A):
            for p, nxt, r, _ in P_dict[s][a]:
                P[s * A + a, nxt] += p
                R[s, a] += p * r
    return P.tocsr(), R
