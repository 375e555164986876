"""Column-blocked ("tiled") transition entries for Jacobi Bellman sweeps (pure, no MPI).

Where a shard's successors are scattered over the whole value vector (a random MDP),
a row-by-row sweep gathers from random cache lines of a vector far larger than L2,
and a quarter or more of the sweep waits on those misses. The tiled layout groups the
entries by (block of ``row_block`` local states, block of ``2**col_bits`` global columns):
a sweep takes one row block at a time, adds ``P * v`` into a per-(s, a) accumulator
(``row_block * A`` float64) tile by tile, each tile's gathers confined to at most
``2**col_bits`` consecutive values, then takes the max over actions. Accumulator and value
block both stay in L2. An entry stores one 32-bit key, its row offset in the high bits and its
column offset in the low ``col_bits`` (the 4 bytes of an int32 column index), beside its
probability, so the bytes streamed per sweep are those of the row layout. While it sweeps a
tile, ``_accumulate`` warms the next tile's value block into L2 with prefetch hints, a line every
few entries: its random gathers would otherwise take the block's first touches as misses to L3
or memory one by one (10^6-state random MDP, both in one process: 68.8 / 70.2 against 72.6 /
73.6 ms per sweep; with every tile gathering from one block, i.e. none of those misses, the
accumulation alone took 46 against 57 ms). ``_add_entries`` runs on an unsigned index (numba
then skips the negative-index wraparound on every load) and hints the key and probability
streams ``STREAM_AHEAD`` bytes ahead, one hint per cache line: 58.7-63.5 against 68.4-69.7 ms
per sweep, old and new kernels in one process (best of 6), the same bits.

The block sizes were tuned on a random MDP of 10^6 states (4 actions, 8 successors; 2 MB L2):
16,384 states x 16,384 columns swept in 74 ms, against 117 ms for 8,192 x 32,768 and 94 ms
for 65,536 x 8,192 (the accumulator then leaves L2); smaller row blocks re-read the value
vector once per row block.

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

from hpcql.prefetch import prefetch, prefetch_l2

COL_BITS = 14  # global columns per tile: 2^14, 128 KB of float64 values
ROW_ENTRIES = 65536  # (s, a) rows per row block: a 512 KB accumulator
KEY_BITS = 32  # an entry's key: row offset << col_bits | column offset
TILES_MIN_VALUES = 2**18  # sweep_layout = auto: tiles only when a shard gathers from at least this many
# values (2 MB of float64, this machine's L2). Measured on random MDPs (4 actions, 8 successors), row
# kernel / tiles time per sweep: 0.73 at 70,000 states, 0.80 at 150,000, 1.34 at 250,000, 1.96 at 500,000,
# 1.99 at 10^6, 1.88 at 2 x 10^6.
LINE_BYTES = 64  # a cache line
LINE_VALUES = LINE_BYTES // 8  # float64 values per cache line
STREAM_AHEAD = 2048  # bytes: how far ahead of use the key and probability streams are hinted (32 lines;
# 10^6-state random MDP: 1-4 KB all within noise, ~10% faster than the hardware prefetchers alone)
KEY_AHEAD = np.uint64(STREAM_AHEAD // 4)  # entries, in uint32 keys
PROB_AHEAD = np.uint64(STREAM_AHEAD // 8)  # entries, in float64 probabilities
KEY_LINE_MASK = np.uint64(LINE_BYTES // 4 - 1)  # an entry index that starts a line of keys has these bits 0
PROB_LINE_MASK = np.uint64(LINE_BYTES // 8 - 1)  # ... of float64 probabilities (divides the key line)
SEGMENTS = 3  # per global column block: ghosts below the shard, local values, ghosts above


@dataclass(frozen=True)
class Tiles:
    """One shard's transition entries in tiles; tile ``t`` holds entries ``ptr[t]:ptr[t+1]``."""

    ptr: np.ndarray
    """int64, ``n_row_blocks * n_col_blocks * SEGMENTS + 1`` tile starts."""
    base: np.ndarray
    """int64 per tile: the extended-vector index its column offsets count from."""
    keys: np.ndarray
    """uint32 per entry: its (s, a) row within its row block << ``col_bits`` | its extended-vector
    index minus its tile's base."""
    probs: np.ndarray
    """per entry, float64 or float32 (as the rows' probabilities)."""
    n_col_blocks: int
    row_block: int
    """States per row block."""
    col_bits: int
    """log2 of the global columns per tile."""

    def sweep_args(self) -> tuple:
        """The tile arguments of ``tiled_sweep_range``, in order."""
        return self.ptr, self.base, self.keys, self.probs, self.n_col_blocks, self.row_block, self.col_bits


def row_block_for(num_actions: int, row_entries: int = ROW_ENTRIES, col_bits: int = COL_BITS) -> int:
    """States per row block (0 when even one state's actions overflow the keys' row bits)."""
    return min(row_entries, 2 ** (KEY_BITS - col_bits)) // num_actions if num_actions >= 1 else 0


def build_tiles(indptr: np.ndarray, cols: np.ndarray, probs: np.ndarray, ghost_states: np.ndarray,
                row_start: int, num_states: int, num_actions: int,
                row_block: int | None = None, col_bits: int = COL_BITS) -> Tiles:
    """The tiled layout of a shard's CSR rows; ``cols`` index ``[local | ghosts]``
    (``halo.ghost_layout``), ``ghost_states`` the ghosts' sorted global ids."""
    row_block = row_block_for(num_actions, col_bits=col_bits) if row_block is None else row_block
    if not 0 <= col_bits < KEY_BITS or not 1 <= row_block * num_actions <= 2 ** (KEY_BITS - col_bits):
        raise ValueError(f"tiles of {row_block} states x {num_actions} actions and 2^{col_bits} columns "
                         f"overflow {KEY_BITS}-bit keys")
    col_block = 1 << col_bits
    n_local = (indptr.shape[0] - 1) // max(num_actions, 1)
    ext_global = np.concatenate([np.arange(row_start, row_start + n_local, dtype=np.int64),
                                 np.asarray(ghost_states, dtype=np.int64)])
    n_col_blocks = max(1, -(-num_states // col_block))
    ptr, base, keys, p = _build(indptr, cols, probs, ext_global, row_start, n_local, num_actions,
                                row_block, col_bits, n_col_blocks)
    return Tiles(ptr, base, keys, p, n_col_blocks, row_block, col_bits)


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
def _build(indptr, cols, probs, ext_global, row_start, n_local, num_actions, row_block, col_bits, n_col_blocks):
    col_block = 1 << col_bits
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
    keys = np.empty(nnz, dtype=np.uint32)
    p = np.empty(nnz, dtype=probs.dtype)
    scratch = np.empty(longest, dtype=np.int64)
    for r in range(n_rows):
        rb = (r // num_actions) // row_block
        for i in range(_sorted_row(indptr, cols, ext_global, r, scratch)):
            k = scratch[i]
            t = _tile_of(ext_global[cols[k]], row_start, row_stop, rb, n_col_blocks, col_block)
            off = cols[k] - base[t]
            if off >= col_block:
                raise ValueError("a tile's columns span more than its column block")
            j = fill[t]
            fill[t] = j + 1
            keys[j] = ((r - rb * row_block * num_actions) << col_bits) | off
            p[j] = probs[k]
    return ptr, base, keys, p


@njit(cache=True, nogil=True, inline="always")
def _next_filled(ptr, t, stop):
    """The first tile from ``t`` on (before ``stop``) that holds entries; ``stop`` when none does."""
    while t < stop and ptr[t + 1] == ptr[t]:
        t += 1
    return t


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _add_entries(keys, probs, vb, acc, mask, shift, first, stop):
    """acc[row] += P * vb[col] over entries ``first .. stop - 1``, hinting the key and probability
    streams ``STREAM_AHEAD`` bytes ahead: one hint per cache line of keys (uint32) and of float64
    probabilities (float32 ones get a redundant hint every other time). Constants, not the arrays'
    item sizes: runtime values here spill the loop's registers.

    The unsigned entry index spares numba's negative-index wraparound on every load.
    """
    last = np.uint64(keys.shape[0] - 1)
    for j in range(np.uint64(first), np.uint64(stop)):
        if j & PROB_LINE_MASK == 0:
            prefetch(probs, min(j + PROB_AHEAD, last))
            if j & KEY_LINE_MASK == 0:
                prefetch(keys, min(j + KEY_AHEAD, last))
        key = keys[j]
        acc[key >> shift] += probs[j] * vb[key & mask]


@njit(cache=True, nogil=True, boundscheck=False)
def _accumulate(ptr, base, keys, probs, col_bits, v_ext, first, stop, acc):
    """acc[row] += P * v_ext[col] over the entries of tiles ``first .. stop - 1``.

    Meanwhile it warms the next non-empty tile's value block into L2, one cache line every few
    entries: a block is otherwise first touched by random gathers, each one a miss to L3 or memory.
    """
    mask = np.uint32((1 << col_bits) - 1)
    shift = np.uint32(col_bits)
    lines = max(1, (1 << col_bits) // LINE_VALUES)
    nxt = first
    for t in range(first, stop):
        if nxt <= t:
            nxt = _next_filled(ptr, t + 1, stop)
        warm = base[nxt] if nxt < stop else 0
        n_warm = min(lines, (v_ext.shape[0] - warm + LINE_VALUES - 1) // LINE_VALUES) if nxt < stop else 0
        k, k1 = ptr[t], ptr[t + 1]
        step = max(1, (k1 - k) // max(n_warm, 1))
        vb = v_ext[base[t]:]
        line = 0
        while k < k1:
            e = min(k + step, k1)
            if line < n_warm:
                prefetch_l2(v_ext, warm + line * LINE_VALUES)
                line += 1
            _add_entries(keys, probs, vb, acc, mask, shift, k, e)
            k = e


@njit(cache=True, nogil=True, boundscheck=False)
def tiled_sweep_range(ptr, base, keys, probs, n_col_blocks, row_block, col_bits, rewards, v_ext, v_out, gamma,
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
        _accumulate(ptr, base, keys, probs, col_bits, v_ext, rb * per_block, (rb + 1) * per_block, acc)
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
