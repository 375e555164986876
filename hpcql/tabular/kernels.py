"""Numba Bellman kernels over one shard's rows (pure, no MPI).

Every kernel makes one pass over the transition entries: no temporary
(n_local, A) arrays in the hot loop. ``v_ext`` is the extended vector
``[local values | ghost values]`` and ``cols`` the column indices remapped into
it (see ``halo.ghost_layout``). Passing ``v_out is v_ext`` gives Gauss-Seidel
(in-place) sweeps, a separate ``v_out`` gives Jacobi sweeps; ``reverse`` runs
the states backwards, so alternating directions carries values across a whole
shard in one Gauss-Seidel sweep whichever way they flow.

Rows are CSR (``indptr``), but most generated MDPs give every (s, a) row the
same number of successors (the gridworld 3, the random MDP its ``successors``).
``kernels_for(width)`` compiles the kernels with that width as a constant: row
``r``'s entries are ``r*width .. r*width + width - 1``, the inner loop is
unrolled and ``indptr`` is not read, which about halves a sweep's time on the
10^6-state gridworld. ``kernels_for(0)`` is the general CSR set; ``row_width``
picks the width a shard allows and ``kernels_for_rows`` the set. Both give bitwise the same results.

``kernels_for(width, hints=True)`` adds prefetch hints (``hpcql.prefetch``):
each sweep asks for the value entries that the state ``PREFETCH_AHEAD`` positions
ahead (in sweep order) will gather. On a random MDP the gathers hit random cache
lines of a vector far larger than L2, and the hints keep several of those misses
in flight: 1.0-1.3x alone on an idle machine, 1.8-3.7x with two processes sweeping
at once (memory latency under load). Where the gathers are local (a gridworld's
neighbours) the hints only cost instructions (0.65x), so ``scattered_gathers``
decides per shard. Hints change no result: every set gives the same bits.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from hpcql.prefetch import prefetch

MAX_WIDTH = 16  # wider uniform rows gain nothing from unrolling: use the CSR kernels
PREFETCH_AHEAD = 4  # states between a gather's prefetch hint and its use (10^6-state random MDP: 3-6 best)
NEAR_ENTRIES = 16384  # a gather within this many entries of its row's state counts as local (128 KB of float64)


def row_width(indptr: np.ndarray) -> int:
    """The common entry count of every row (1..MAX_WIDTH), else 0 (general CSR)."""
    counts = np.diff(indptr)
    if counts.size == 0 or counts[0] < 1 or counts[0] > MAX_WIDTH or not (counts == counts[0]).all():
        return 0
    return int(counts[0])


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _row_dot(indptr, cols, probs, x, row, width):
    """sum over row ``row``'s entries of P * x[col]; fixed-width rows when ``width > 0``.

    The indices are unsigned (``cols`` holds non-negative 32-bit ghost-layout
    columns), which spares numba's negative-index wraparound on every load:
    ~5-20% per sweep on the 10^6-state gridworld, same bits.
    """
    acc = 0.0
    if width > 0:
        k = np.uint64(row * width)
        for j in range(np.uint64(width)):
            acc += probs[k + j] * x[np.uint32(cols[k + j])]
    else:
        for k in range(np.uint64(indptr[row]), np.uint64(indptr[row + 1])):
            acc += probs[k] * x[np.uint32(cols[k])]
    return acc


def scattered_gathers(indptr: np.ndarray, cols: np.ndarray, num_actions: int, samples: int = 4096) -> bool:
    """Whether most entries gather far from their row's state (then prefetch hints pay).

    Looks at the entries of up to ``samples`` evenly spaced states; a gather is far
    when its column is more than ``NEAR_ENTRIES`` away from the state's own index.
    """
    n_states = (indptr.shape[0] - 1) // max(num_actions, 1)
    if n_states == 0 or cols.size == 0:
        return False
    states = np.unique(np.linspace(0, n_states - 1, min(samples, n_states)).astype(np.int64))
    far = total = 0
    for state in states:
        seg = cols[indptr[state * num_actions]:indptr[(state + 1) * num_actions]].astype(np.int64)
        far += int(np.count_nonzero(np.abs(seg - state) > NEAR_ENTRIES))
        total += seg.size
    return total > 0 and far > total // 2


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _prefetch_rows(indptr, cols, x, first, stop, width):
    """Prefetch hints for ``x[col]`` over the entries of rows ``first .. stop - 1``."""
    if width > 0:
        lo, hi = first * width, stop * width
    else:
        lo, hi = indptr[first], indptr[stop]
    for k in range(lo, hi):
        prefetch(x, cols[k])


class Kernels(NamedTuple):
    """The kernels for one row layout (see ``kernels_for``); all take ``indptr`` first."""

    width: int
    bellman_sweep_range: Callable
    bellman_sweep: Callable
    policy_sweep: Callable
    policy_matvec: Callable
    q_values: Callable


def kernels_for(width: int, hints: bool = False) -> Kernels:
    """Kernels for rows of ``width`` entries each (0: general CSR), with or without prefetch hints.

    Compiled once per (width, hints), cached on disk.
    """
    if not 0 <= width <= MAX_WIDTH:
        raise ValueError(f"row width {width} outside 0..{MAX_WIDTH}")
    return _compile_kernels(int(width), bool(hints))


# The loops below are module-level functions that take the row width and the prefetch distance
# as arguments and are inlined into ``_compile_kernels``' closures, where both are constants.
# The closures then capture plain integers only: a closure that captured another jitted
# function would get a new disk-cache key in every process (dispatchers pickle with a
# per-process id), so numba would compile it again at every start and the cache would grow.
@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _bellman_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, s, width):
    """Bellman update of state ``s`` into ``v_out`` / ``policy_out``; returns the signed change."""
    num_actions = rewards.shape[1]
    best = -np.inf
    arg = 0
    for a in range(num_actions):
        q = rewards[s, a] + gamma * _row_dot(indptr, cols, probs, v_ext, s * num_actions + a, width)
        if q > best:
            best = q
            arg = a
    diff = best - v_ext[s]
    v_out[s] = best
    policy_out[s] = arg
    return diff


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _bellman_sweep_range(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, reverse, width, ahead):
    """The Bellman sweep's loop (see ``Kernels.bellman_sweep_range``)."""
    n_local, num_actions = rewards.shape
    lo = np.inf
    hi = -np.inf
    if reverse:  # two loops, not a direction test per state in the loop body
        for s in range(n_local - 1, -1, -1):
            if ahead and s >= ahead:
                t = s - ahead
                _prefetch_rows(indptr, cols, v_ext, t * num_actions, (t + 1) * num_actions, width)
            diff = _bellman_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, s, width)
            lo, hi = min(lo, diff), max(hi, diff)
    else:
        for s in range(n_local):
            if ahead and s + ahead < n_local:
                t = s + ahead
                _prefetch_rows(indptr, cols, v_ext, t * num_actions, (t + 1) * num_actions, width)
            diff = _bellman_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, s, width)
            lo, hi = min(lo, diff), max(hi, diff)
    return lo, hi


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _policy_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, s, width):
    """Evaluation update of state ``s`` under ``policy`` into ``v_out``; returns |change|."""
    a = policy[s]
    val = rewards[s, a] + gamma * _row_dot(indptr, cols, probs, v_ext, s * rewards.shape[1] + a, width)
    v_out[s] = val
    return abs(val - v_ext[s])


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _policy_sweep(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, reverse, width, ahead):
    """The evaluation sweep's loop (see ``Kernels.policy_sweep``)."""
    n_local, num_actions = rewards.shape
    residual = 0.0
    if reverse:  # as in the Bellman sweep: no direction test per state
        for s in range(n_local - 1, -1, -1):
            if ahead and s >= ahead:
                row = (s - ahead) * num_actions + policy[s - ahead]
                _prefetch_rows(indptr, cols, v_ext, row, row + 1, width)
            residual = max(residual, _policy_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, s, width))
    else:
        for s in range(n_local):
            if ahead and s + ahead < n_local:
                row = (s + ahead) * num_actions + policy[s + ahead]
                _prefetch_rows(indptr, cols, v_ext, row, row + 1, width)
            residual = max(residual, _policy_state(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, s, width))
    return residual


@functools.lru_cache(maxsize=None)
def _compile_kernels(width: int, hints: bool) -> Kernels:
    ahead = PREFETCH_AHEAD if hints else 0  # a compile-time constant: 0 compiles the hints out

    @njit(cache=True, nogil=True, boundscheck=False)
    def bellman_sweep_range(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, reverse=False):
        """V_out[s] = max_a r(s,a) + gamma * sum_j P(j|s,a) v_ext[j] for the local rows.

        Returns (min, max) of the signed change ``V_out[s] - v_ext[s]`` (for the
        span stopping rule) and stores the greedy action (lowest index on ties) in
        ``policy_out``.
        """
        return _bellman_sweep_range(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, reverse,
                                    width, ahead)

    @njit(cache=True, nogil=True, boundscheck=False)
    def bellman_sweep(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, reverse=False):
        """Like ``bellman_sweep_range``; returns the largest |change| (0 for an empty shard)."""
        lo, hi = _bellman_sweep_range(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy_out, reverse,
                                      width, ahead)
        return max(hi, -lo, 0.0)

    @njit(cache=True, nogil=True, boundscheck=False)
    def policy_sweep(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, reverse=False):
        """One evaluation sweep of a fixed policy: V_out = r^pi + gamma P^pi v_ext; max |change|."""
        return _policy_sweep(indptr, cols, probs, rewards, v_ext, v_out, gamma, policy, reverse, width, ahead)

    @njit(cache=True, nogil=True, boundscheck=False)
    def policy_matvec(indptr, cols, probs, x_ext, gamma, policy, y):
        """y = (I - gamma P^pi) x on the local rows (x_ext holds the ghosts of x)."""
        n_local = y.shape[0]
        num_actions = (indptr.shape[0] - 1) // max(n_local, 1)
        for s in range(n_local):
            if ahead and s + ahead < n_local:
                row = (s + ahead) * num_actions + policy[s + ahead]
                _prefetch_rows(indptr, cols, x_ext, row, row + 1, width)
            y[s] = x_ext[s] - gamma * _row_dot(indptr, cols, probs, x_ext, s * num_actions + policy[s], width)

    @njit(cache=True, nogil=True, boundscheck=False)
    def q_values(indptr, cols, probs, rewards, v_ext, gamma, q_out):
        """Q(s,a) = r(s,a) + gamma * sum_j P(j|s,a) v_ext[j] for the local rows."""
        n_local, num_actions = rewards.shape
        for s in range(n_local):
            for a in range(num_actions):
                q_out[s, a] = rewards[s, a] + gamma * _row_dot(indptr, cols, probs, v_ext, s * num_actions + a, width)

    return Kernels(width, bellman_sweep_range, bellman_sweep, policy_sweep, policy_matvec, q_values)


def kernels_for_rows(indptr: np.ndarray, cols: np.ndarray, num_actions: int) -> Kernels:
    """The kernel set for these CSR rows: fixed-width when every row has the same count,
    prefetch hints when most gathers are far from their state (``scattered_gathers``)."""
    return kernels_for(row_width(indptr), scattered_gathers(indptr, cols, num_actions))


CSR = kernels_for(0)


@njit(cache=True, nogil=True, boundscheck=False)
def policy_rows(indptr, cols, probs, rewards, policy):
    """P^pi and r^pi as a compact CSR (one row per state, in the same entry order).

    Evaluation sweeps over it stream a quarter of the data (for 4 actions) contiguously
    instead of hopping over the other actions' rows; ``policy_sweep`` runs on it with
    ``rewards = r_pi[:, None]`` and an all-zero policy, with bitwise the same results.
    """
    n_local, num_actions = rewards.shape
    pi_indptr = np.zeros(n_local + 1, dtype=indptr.dtype)
    for s in range(n_local):
        row = s * num_actions + policy[s]
        pi_indptr[s + 1] = pi_indptr[s] + indptr[row + 1] - indptr[row]
    pi_cols = np.empty(pi_indptr[n_local], dtype=cols.dtype)
    pi_probs = np.empty(pi_indptr[n_local], dtype=probs.dtype)
    pi_rewards = np.empty((n_local, 1), dtype=rewards.dtype)
    for s in range(n_local):
        row = s * num_actions + policy[s]
        j = pi_indptr[s]
        for k in range(indptr[row], indptr[row + 1]):
            pi_cols[j] = cols[k]
            pi_probs[j] = probs[k]
            j += 1
        pi_rewards[s, 0] = rewards[s, policy[s]]
    return pi_indptr, pi_cols, pi_probs, pi_rewards


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """Greedy actions, lowest index on ties."""
    return np.argmax(q, axis=1).astype(np.int64) if q.size else np.zeros(q.shape[0], dtype=np.int64)
