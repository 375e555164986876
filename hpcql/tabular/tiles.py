"""Column-blocked ("tiled") transition entries for Jacobi Bellman sweeps (pure, no MPI).

Where a shard's successors are scattered over the whole value vector (a random MDP),
a row-by-row sweep gathers from random cache lines of a vector far larger than L2,
and a quarter or more of the sweep waits on those misses. The tiled layout groups the
entries by (block of ``row_block`` local states, block of ``COL_BLOCK`` global columns):
a sweep takes one row block at a time, adds ``P * v`` into a per-(s, a) accumulator
(``row_block * A`` float64) tile by tile, each tile's gathers confined to at most
``COL_BLOCK`` consecutive values, then takes the max over actions. Accumulator and value
block both stay in L2. An entry stores a 16-bit row offset and a 16-bit column offset (the
4 bytes of an int32 column index) beside its probability, so the bytes streamed per sweep
are those of the row layout.

A global column block splits into three tiles per row block: ghosts below the shard, local
values, ghosts above (``[local | ghosts]`` keeps each part contiguous, ghosts sorted by
global id). Every (s, a) row's terms are added in increasing global column order (ties in
entry order), whatever the partition, so a sync run gives bitwise the same values at any
rank count. The row kernels add in entry order: the two layouts agree to rounding, not bitwise.

Only Jacobi sweeps (``v_out`` separate from ``v_ext``) can run tiled: a Gauss-Seidel sweep
must see the values of the states before it, which a tile pass has not finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

COL_BLOCK = 32768  # global columns per tile: 256 KB of float64 values, at most 2^16 for the 16-bit offsets
ROW_ENTRIES = 32768  # (s, a) rows per row block: a 256 KB accumulator, at most 2^16 for the 16-bit offsets
SEGMENTS = 3  # per global column block: ghosts below the shard, local values, ghosts above


@dataclass(frozen=True)
class Tiles:
    """One shard's transition entries in tiles; tile ``t`` holds entries ``ptr[t]:ptr[t+1]``."""

    ptr: np.ndarray
    """int64, ``n_row_blocks * n_col_blocks * SEGMENTS + 1`` tile starts."""
    base: np.ndarray
    """int64 per tile: the extended-vector index its column offsets count from."""
    rows: np.ndarray
    """uint16 per entry: (s, a) row within its row block."""
    cols: np.ndarray
    """uint16 per entry: extended-vector index minus its tile's base."""
    probs: np.ndarray
    """per entry, float64 or float32 (as the rows' probabilities)."""
    n_col_blocks: int
    row_block: int
    """States per row block."""

    def sweep_args(self) -> tuple:
        """The tile arguments of ``tiled_sweep_range``, in order."""
        return self.ptr, self.base, self.rows, self.cols, self.probs, self.n_col_blocks, self.row_block


def row_block_for(num_actions: int, row_entries: int = ROW_ENTRIES) -> int:
    """States per row block (0 when even one state's actions overflow the 16-bit row offsets)."""
    return min(row_entries, 2**16) // num_actions if num_actions >= 1 else 0


def build_tiles(indptr: np.ndarray, cols: np.ndarray, probs: np.ndarray, ghost_states: np.ndarray,
                row_start: int, num_states: int, num_actions: int,
                row_block: int | None = None, col_block: int = COL_BLOCK) -> Tiles:
    """The tiled layout of a shard's CSR rows; ``cols`` index ``[local | ghosts]``
    (``halo.ghost_layout``), ``ghost_states`` the ghosts' sorted global ids."""
    row_block = row_block_for(num_actions) if row_block is None else row_block
    if not 1 <= row_block * num_actions <= 2**16 or not 1 <= col_block <= 2**16:
        raise ValueError(f"tiles of {row_block} states x {num_actions} actions and {col_block} columns "
                         "overflow 16-bit offsets")
    n_local = (indptr.shape[0] - 1) // max(num_actions, 1)
    ext_global = np.concatenate([np.arange(row_start, row_start + n_local, dtype=np.int64),
                                 np.asarray(ghost_states, dtype=np.int64)])
    n_col_blocks = max(1, -(-num_states // col_block))
    ptr, base, rows, offs, p = _build(indptr, cols, probs, ext_global, row_start, n_local, num_actions,
                                      row_block, col_block, n_col_blocks)
    return Tiles(ptr, base, rows, offs, p, n_col_blocks, row_block)


@njit(cache=True, nogil=True, inline="always")
def _tile_of(g, row_start, row_stop, rb, n_col_blocks, col_block):
    """Tile index of an entry of row block ``rb`` gathering global column ``g``."""
    seg = 0 if g < row_start else (1 if g < row_stop else 2)
    return (rb * n_col_blocks + g // col_block) * SEGMENTS + seg


@njit(cache=True, nogil=True)
def _sorted_row(indptr, cols, ext_global, r, scratch):
    """The entry positions of row ``r`` ordered by global column (stable), into ``scratch``; their count."""
    lo, hi = indptr[r], indptr[r + 1]
    n = hi - lo
    if n > 32:  # long rows: a stable merge sort
        keys = np.empty(n, dtype=np.int64)
        for i in range(n):
            keys[i] = ext_global[cols[lo + i]]
        order = np.argsort(keys, kind="mergesort")
        for i in range(n):
            scratch[i] = lo + order[i]
        return n
    for i in range(n):  # short rows: insertion sort, stable
        k = lo + i
        g = ext_global[cols[k]]
        j = i - 1
        while j >= 0 and ext_global[cols[scratch[j]]] > g:
            scratch[j + 1] = scratch[j]
            j -= 1
        scratch[j + 1] = k
    return n


@njit(cache=True, nogil=True)
def _build(indptr, cols, probs, ext_global, row_start, n_local, num_actions, row_block, col_block, n_col_blocks):
    row_stop = row_start + n_local
    n_rows = n_local * num_actions
    n_row_blocks = (n_local + row_block - 1) // row_block
    n_tiles = n_row_blocks * n_col_blocks * SEGMENTS
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    none = np.iinfo(np.int64).max
    base = np.full(n_tiles, none, dtype=np.int64)
    longest = 0
    for r in range(n_rows):
        rb = (r // num_actions) // row_block
        longest = max(longest, indptr[r + 1] - indptr[r])
        for k in range(indptr[r], indptr[r + 1]):
            t = _tile_of(ext_global[cols[k]], row_start, row_stop, rb, n_col_blocks, col_block)
            counts[t + 1] += 1
            base[t] = min(base[t], cols[k])
    for t in range(n_tiles):
        if base[t] == none:
            base[t] = 0
    ptr = np.cumsum(counts)
    fill = ptr[:-1].copy()
    nnz = indptr[n_rows]
    rows = np.empty(nnz, dtype=np.uint16)
    offs = np.empty(nnz, dtype=np.uint16)
    p = np.empty(nnz, dtype=probs.dtype)
    scratch = np.empty(longest, dtype=np.int64)
    for r in range(n_rows):
        rb = (r // num_actions) // row_block
        for i in range(_sorted_row(indptr, cols, ext_global, r, scratch)):
            k = scratch[i]
            t = _tile_of(ext_global[cols[k]], row_start, row_stop, rb, n_col_blocks, col_block)
            off = cols[k] - base[t]
            if off >= 2**16:
                raise ValueError("a tile's columns span more than 2^16 values")
            j = fill[t]
            fill[t] = j + 1
            rows[j] = r - rb * row_block * num_actions
            offs[j] = off
            p[j] = probs[k]
    return ptr, base, rows, offs, p


@njit(cache=True, nogil=True, boundscheck=False)
def _accumulate(ptr, base, rows, cols, probs, v_ext, first, stop, acc):
    """acc[row] += P * v_ext[col] over the entries of tiles ``first .. stop - 1``."""
    for t in range(first, stop):
        b = base[t]
        for k in range(ptr[t], ptr[t + 1]):
            acc[rows[k]] += probs[k] * v_ext[b + cols[k]]


@njit(cache=True, nogil=True, boundscheck=False)
def tiled_sweep_range(ptr, base, rows, cols, probs, n_col_blocks, row_block, rewards, v_ext, v_out, gamma,
                      policy_out):
    """Jacobi Bellman sweep on tiles: V_out[s] = max_a r(s,a) + gamma * sum_j P(j|s,a) v_ext[j].

    As ``kernels.bellman_sweep_range`` (``v_out`` must not be ``v_ext``): returns (min, max) of
    ``V_out[s] - v_ext[s]``; greedy actions (lowest index on ties) into ``policy_out``.
    """
    n_local, num_actions = rewards.shape
    acc = np.empty(row_block * num_actions, dtype=np.float64)
    lo = np.inf
    hi = -np.inf
    per_block = n_col_blocks * SEGMENTS
    for rb in range((n_local + row_block - 1) // row_block):
        s0 = rb * row_block
        s1 = min(s0 + row_block, n_local)
        acc[:(s1 - s0) * num_actions] = 0.0
        _accumulate(ptr, base, rows, cols, probs, v_ext, rb * per_block, (rb + 1) * per_block, acc)
        for s in range(s0, s1):
            best = -np.inf
            arg = 0
            i = (s - s0) * num_actions
            for a in range(num_actions):
                q = rewards[s, a] + gamma * acc[i + a]
                if q > best:
                    best = q
                    arg = a
            diff = best - v_ext[s]
            v_out[s] = best
            policy_out[s] = arg
            lo, hi = min(lo, diff), max(hi, diff)
    return lo, hi
