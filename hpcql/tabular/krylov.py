"""Distributed Krylov solvers (GMRES(m), BiCGStab) for row-sharded vectors.

Vectors are this rank's rows; inner products and norms are reduced over
``comm`` (GMRES orthogonalises with classical Gram-Schmidt, twice, so each
Arnoldi step needs two reductions instead of one per basis vector). ``matvec``
is supplied by the caller and does its own halo exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from mpi4py import MPI

from hpcql.comm import allreduce_yielding

MatVec = Callable[[np.ndarray, np.ndarray], None]  # matvec(x_local, y_local_out)


@dataclass
class KrylovResult:
    x: np.ndarray
    iterations: int
    residual_norm: float
    converged: bool


def _sum(comm: MPI.Comm, local: float) -> float:
    """Global sum of one local float (collective)."""
    return float(allreduce_yielding(comm, np.array([local]))[0])


def _dots(comm: MPI.Comm, basis: np.ndarray, w: np.ndarray) -> np.ndarray:
    return allreduce_yielding(comm, basis @ w)


def norm2(comm: MPI.Comm, x: np.ndarray) -> float:
    """Global 2-norm of a sharded vector."""
    return float(np.sqrt(_sum(comm, x @ x)))


def gmres(comm: MPI.Comm, matvec: MatVec, b: np.ndarray, x0: np.ndarray, atol: float,
          restart: int = 30, max_iter: int = 1000) -> KrylovResult:
    """Restarted GMRES until ``||b - A x||_2 <= atol`` (global) or ``max_iter`` steps."""
    n = b.size
    x = x0.copy()
    r = np.empty(n)
    w = np.empty(n)
    total = 0
    while True:
        matvec(x, r)
        np.subtract(b, r, out=r)
        beta = norm2(comm, r)
        if beta <= atol or total >= max_iter:
            return KrylovResult(x, total, beta, beta <= atol)
        V = np.zeros((restart + 1, n))
        H = np.zeros((restart + 1, restart))
        cs, sn = np.zeros(restart), np.zeros(restart)
        g = np.zeros(restart + 1)
        g[0] = beta
        V[0] = r / beta
        k_used = 0
        for k in range(restart):
            matvec(V[k], w)
            for _ in range(2):  # CGS2: two classical passes, one reduction each
                h = _dots(comm, V[: k + 1], w)
                w -= h @ V[: k + 1]
                H[: k + 1, k] += h
            H[k + 1, k] = norm2(comm, w)
            if H[k + 1, k] > 0:
                V[k + 1] = w / H[k + 1, k]
            for i in range(k):  # apply previous Givens rotations
                H[i, k], H[i + 1, k] = cs[i] * H[i, k] + sn[i] * H[i + 1, k], -sn[i] * H[i, k] + cs[i] * H[i + 1, k]
            denom = np.hypot(H[k, k], H[k + 1, k])
            cs[k], sn[k] = (1.0, 0.0) if denom == 0 else (H[k, k] / denom, H[k + 1, k] / denom)
            H[k, k] = cs[k] * H[k, k] + sn[k] * H[k + 1, k]
            H[k + 1, k] = 0.0
            g[k], g[k + 1] = cs[k] * g[k], -sn[k] * g[k]
            k_used = k + 1
            total += 1
            if abs(g[k + 1]) <= atol or total >= max_iter or H[k, k] == 0:
                break
        y = np.linalg.solve(np.triu(H[:k_used, :k_used]), g[:k_used]) if k_used else np.zeros(0)
        x += y @ V[:k_used]


def bicgstab(comm: MPI.Comm, matvec: MatVec, b: np.ndarray, x0: np.ndarray, atol: float,
             max_iter: int = 1000) -> KrylovResult:
    """BiCGStab until ``||b - A x||_2 <= atol`` (global) or ``max_iter`` steps."""
    x = x0.copy()
    r = np.empty_like(b)
    matvec(x, r)
    r = b - r
    r_hat = r.copy()
    p, v, s, t = (np.zeros_like(b) for _ in range(4))
    rho_old = alpha = omega = 1.0
    res = norm2(comm, r)
    it = 0
    while res > atol and it < max_iter:
        rho = _sum(comm, float(r_hat @ r))
        if rho == 0.0:
            break
        beta = (rho / rho_old) * (alpha / omega) if it else 0.0
        p = r + beta * (p - omega * v)
        matvec(p, v)
        alpha = rho / _sum(comm, float(r_hat @ v))
        s = r - alpha * v
        if norm2(comm, s) <= atol:
            x += alpha * p
            r = s
            it += 1
            res = norm2(comm, r)
            break
        matvec(s, t)
        tt, ts = allreduce_yielding(comm, np.array([t @ t, t @ s]))
        omega = ts / tt if tt > 0 else 0.0
        x += alpha * p + omega * s
        r = s - omega * t
        rho_old = rho
        it += 1
        res = norm2(comm, r)
        if omega == 0.0:
            break
    return KrylovResult(x, it, res, res <= atol)
