"""Numba kernels that advance a batch of agents on one shard (pure, no MPI).

An agent is (id, global state, rng counter, episode step). ``advance_agents``
runs every agent for up to ``max_steps`` steps in array order: restart when the
episode ended, pick an epsilon-greedy action, sample the successor from the
shard's CSR row, apply the Q-learning update, and stop early when the successor
(or a new start state) lies on another rank; the agent is then flagged in
``moved`` for migration. ``max_a Q(s', .)`` of an off-rank successor is read from
the ghost part of ``vmax_ext`` (the halo layout's extended vector).

A sampled step reads three values of one transition entry (probability, column of the
successor in the extended vector, index of its outcome reward in the shard's table of
distinct rewards); ``pack_entries`` keeps them side by side in one record
(``entry_dtype``): 16 bytes, 12 with float32 probabilities (``algo.float32``). The
successor's global id is not stored: it is ``row_start + c`` for a local column and
``ghost_states[c - n_local]`` for a ghost. Rows of a shard where every (s, a) has the
same number of entries (``row_width``, the gridworld's 3) are found at ``row * width``
without reading ``indptr``. The step is bound by how much of the hot data the caches
hold: on this 2-core VM a 10,000-state gridworld ran 1.8x the updates per second of a
20,000-state one with the earlier 32-byte records (global id and reward stored, indptr
read), and padding those records to 64 bytes cost the 10,000-state grid as much. These
records and the dropped ``indptr`` take the bytes per state from 480 to 256 (float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hpcql.qlearning.rng import agent_key, uniform

# stats slots written by advance_agents
ST_UPDATES, ST_ABS_TD, ST_RESTARTS, ST_MOVED = 0, 1, 2, 3
NUM_STATS = 4
STEP_CONSTANT, STEP_VISITS, STEP_RESCALED = 0, 1, 2
STEP_KINDS = {"constant": STEP_CONSTANT, "visits": STEP_VISITS, "rescaled": STEP_RESCALED}


def entry_dtype(prob_dtype: np.dtype) -> np.dtype:
    """The packed entry record: probability (float64 or float32), extended column, reward index."""
    return np.dtype([("p", np.dtype(prob_dtype)), ("c", np.int32), ("ri", np.int32)], align=True)


def pack_entries(probs: np.ndarray, rewards: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(one ``entry_dtype`` record per transition entry, the table of distinct outcome rewards)."""
    table, index = np.unique(np.asarray(rewards, dtype=np.float64), return_inverse=True)
    out = np.empty(probs.size, dtype=entry_dtype(probs.dtype))
    out["p"], out["c"], out["ri"] = probs, cols, index.reshape(-1)
    return out, table


@njit(cache=True, nogil=True, inline="always")
def _row_max(q, s):
    m = q[s, 0]
    for b in range(1, q.shape[1]):
        if q[s, b] > m:
            m = q[s, b]
    return m


@njit(cache=True, nogil=True, inline="always")
def _exploring_start(key, restart_ctr, explore_fraction):
    """Whether the restart drawn at ``restart_ctr`` is an exploring start (draw 0 of that counter)."""
    if explore_fraction >= 1.0:
        return True
    if explore_fraction <= 0.0:
        return False
    return uniform(key, restart_ctr, 0) < explore_fraction


@njit(cache=True, nogil=True, boundscheck=False)
def advance_agents(ids, states, ctrs, ep_steps, moved, max_steps, seed_key,
                   q, visits, vmax_ext, indptr, width, entries, reward_table, ghost_states, absorbing,
                   row_start, gamma, epsilon, alpha, omega, step_kind,
                   explore_fraction, start_states, num_states, max_episode_steps, stats):
    """Advance every agent up to ``max_steps`` steps; returns the number of Q updates.

    ``entries`` are the shard's transition entries (``pack_entries`` records, CSR order
    under ``indptr``, or ``width`` per row when ``width > 0``) with their ``reward_table``;
    ``ghost_states`` the global ids of the ghost columns. The reward of a step is that of
    the sampled outcome (``reward_table[entries[k].ri]``), so
    the target's variance is that of r + gamma max Q(s') jointly, not of max Q(s')
    around a fixed expected reward (which, near a rewarding absorbing state, is
    large and, through the max, biases Q upward).
    ``states[i] < 0`` means "not placed yet" (restart first). ``step_kind``: constant
    ``alpha``, ``n(s,a)^-omega`` (visits) or ``(1 + (1-gamma)(n(s,a)-1))^-omega`` (rescaled).
    An episode begins with an exploring start with probability ``explore_fraction``
    (a uniform state over all states, then a uniform first action), otherwise in a
    uniformly picked one of ``start_states``.
    """
    n_local, num_actions = q.shape
    row_stop = row_start + n_local
    n_starts = start_states.shape[0]
    updates = 0
    abs_td = 0.0
    restarts = 0
    n_moved = 0
    for i in range(ids.shape[0]):
        key = agent_key(seed_key, ids[i])
        ctr = ctrs[i]
        g = states[i]
        ep = ep_steps[i]
        s = g - row_start
        out = False
        t = 0
        while t < max_steps:
            t += 1
            if g < 0 or ep >= max_episode_steps or absorbing[s]:
                u = uniform(key, ctr, 3)
                if _exploring_start(key, ctr, explore_fraction):
                    g = min(np.int64(u * num_states), num_states - 1)
                else:
                    g = start_states[min(np.int64(u * n_starts), n_starts - 1)]
                ctr += np.uint64(1)
                ep = 0
                restarts += 1
                if g < row_start or g >= row_stop:
                    out = True
                    break
                s = g - row_start
                continue
            # epsilon-greedy action, ties broken uniformly
            u = uniform(key, ctr, 1)
            # ep == 0: no step since the restart at counter ctr - 1
            if (ep == 0 and _exploring_start(key, ctr - np.uint64(1), explore_fraction)) or uniform(key, ctr, 0) < epsilon:
                a = min(np.int64(u * num_actions), num_actions - 1)
            else:
                best = q[s, 0]
                ties = 1
                for b in range(1, num_actions):
                    if q[s, b] > best:
                        best = q[s, b]
                        ties = 1
                    elif q[s, b] == best:
                        ties += 1
                pick = min(np.int64(u * ties), ties - 1)
                a = 0
                for b in range(num_actions):
                    if q[s, b] == best:
                        if pick == 0:
                            a = b
                            break
                        pick -= 1
            # successor
            row = s * num_actions + a
            if width > 0:
                lo = row * width
                hi = lo + width
            else:
                lo = indptr[row]
                hi = indptr[row + 1]
            u = uniform(key, ctr, 2)
            k = lo
            acc = np.float64(entries[lo].p)  # float64 sums for float32 records too
            while acc <= u and k < hi - 1:
                k += 1
                acc += np.float64(entries[k].p)
            c = entries[k].c
            if c < n_local:
                m = _row_max(q, c)
            else:
                m = vmax_ext[c]
            td = reward_table[entries[k].ri] + gamma * m - q[s, a]
            visits[s, a] += 1
            if step_kind == STEP_VISITS:
                step = visits[s, a] ** (-omega)
            elif step_kind == STEP_RESCALED:
                step = (1.0 + (1.0 - gamma) * (visits[s, a] - 1)) ** (-omega)
            else:
                step = alpha
            q[s, a] += step * td
            abs_td += abs(td)
            updates += 1
            ctr += np.uint64(1)
            ep += 1
            if c >= n_local:
                g = ghost_states[c - n_local]
                out = True
                break
            g = row_start + c
            s = c
        states[i] = g
        ctrs[i] = ctr
        ep_steps[i] = ep
        moved[i] = out
        if out:
            n_moved += 1
    stats[ST_UPDATES] += updates
    stats[ST_ABS_TD] += abs_td
    stats[ST_RESTARTS] += restarts
    stats[ST_MOVED] += n_moved
    return updates


@njit(cache=True, nogil=True, boundscheck=False)
def rows_max(q, rows, out):
    """out[s] = max_a q[s, a] for each s in ``rows``."""
    for i in range(rows.shape[0]):
        s = rows[i]
        out[s] = _row_max(q, s)
