"""MPI script: move a gridworld's rows to another partition and check them against a direct build.

usage: move_rows.py CUTS  (comma-separated inner cut points of the new partition)
Every rank compares its moved shard with ``gridworld_shard`` built directly for its new rows,
and a state-major array with its known global values; rank 0 prints "ok" when all agree.
"""

import sys

import numpy as np
from mpi4py import MPI

from hpcql.config import GridworldEnv
from hpcql.mdp.gridworld import gridworld_shard
from hpcql.partition import uniform_partition
from hpcql.redistribute import RowMover

comm = MPI.COMM_WORLD
env = GridworldEnv(kind="gridworld", rows=9, cols=7, slip=0.2)
S = env.rows * env.cols
old = uniform_partition(S, comm.size)
new = np.array([0, *(int(c) for c in sys.argv[1].split(",")), S], dtype=np.int64)
r = comm.rank
mover = RowMover(comm, old, new)
moved = mover.shard(gridworld_shard(env, 0, int(old[r]), int(old[r + 1])))
direct = gridworld_shard(env, 0, int(new[r]), int(new[r + 1]))
for name in ("indptr", "indices", "probs", "rewards", "entry_rewards"):
    got, want = getattr(moved, name), getattr(direct, name)
    assert got.dtype == want.dtype and np.array_equal(got, want), (r, name, got, want)
assert (moved.row_start, moved.row_stop) == (direct.row_start, direct.row_stop)
values = np.arange(S * 3, dtype=np.float64).reshape(S, 3)
assert np.array_equal(mover.rows(values[old[r]: old[r + 1]]), values[new[r]: new[r + 1]])
ok = comm.gather(True)
if r == 0:
    print("ok" if all(ok) else "mismatch")
