"""MPI script: sums from ``vector_allreduce`` against a float64 sum of the gathered vectors.

usage: vector_allreduce_check.py KIND RANKS_PER_NODE DIRECT_MAX LAG
Every rank posts 300 random vectors, keeping up to LAG reductions in flight, with random
short sleeps so ranks drift apart (a post must never overwrite a slot another rank still
reads; every other vector is written into ``next_slot`` before the sleep and posted without
a copy); every collected sum must match a float64 reference (computed locally: every rank
regenerates every rank's vectors) and be the same bits on every rank (compared at the end).
Rank 0 prints "ok nodes=N direct=D" when all agree.
"""

import hashlib
import sys
import time
from collections import deque

import numpy as np
from mpi4py import MPI

from hpcql.vector_allreduce import NodeAllreduce, vector_allreduce

comm = MPI.COMM_WORLD


def abort_on_error(exc_type, exc, tb) -> None:  # a failed check ends every rank now, not at the timeout
    sys.__excepthook__(exc_type, exc, tb)
    sys.stderr.flush()
    comm.Abort(1)


sys.excepthook = abort_on_error
kind, ranks_per_node, direct_max, lag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = 1001  # odd: chunks of uneven length
if kind == "shared-memory":
    red = NodeAllreduce(comm, n, lag, ranks_per_node, direct_max)
else:
    red = vector_allreduce(kind, comm, n, lag)  # type: ignore[arg-type]
# every rank can regenerate every rank's vectors, so references need no communication and
# ranks drift apart as far as the reducer lets them (up to LAG reductions)
streams = [np.random.default_rng(r) for r in range(comm.size)]
sleeps = np.random.default_rng(1000 + comm.rank)
pending: deque = deque()
digests: list[bytes] = []


def check(seq: int, ref: np.ndarray, it: int) -> None:
    out = np.full(n, np.nan, dtype=np.float32)
    red.collect(seq, out)
    err = float(np.max(np.abs(out - ref)))
    assert err < 1e-4, (comm.rank, it, err)
    digests.append(hashlib.sha256(out.tobytes()).digest())


for it in range(300):
    vecs = [s.standard_normal(n).astype(np.float32) for s in streams]
    ref = np.sum(np.array(vecs, dtype=np.float64), axis=0)
    mine = vecs[comm.rank]
    if it % 2:  # computed in place: the slot must already be free of other ranks' reads
        slot = red.next_slot()
        slot[...] = mine
        mine = slot
    if sleeps.random() < 0.1:
        time.sleep(0.002)
    pending.append((red.post(mine), ref, it))
    red.progress()
    while len(pending) > lag:
        check(*pending.popleft())
while pending:
    check(*pending.popleft())
every = comm.allgather(digests)
assert all(d == every[0] for d in every), (comm.rank, "ranks got different bits")
rng = np.random.default_rng(comm.rank)
blocking = np.arange(n, dtype=np.float32) * (comm.rank + 1)
red.allreduce(blocking)
assert np.array_equal(blocking, np.arange(n, dtype=np.float32) * (comm.size * (comm.size + 1) // 2))
mean = rng.standard_normal(n).astype(np.float32)  # the mean: the float32 sum divided in float32
want = np.sum(np.array(comm.allgather(mean), dtype=np.float64), axis=0) / comm.size
red.allreduce(mean, divisor=comm.size)
assert float(np.max(np.abs(mean - want))) < 1e-5, "mean"
src, dst = blocking.copy(), np.zeros(n, dtype=np.float32)  # into another array: src left alone
assert red.allreduce(src, divisor=2.0, out=dst) is dst and np.array_equal(src, blocking)
assert np.array_equal(dst, blocking * np.float32(comm.size / 2)), "allreduce into out"
assert all(b == comm.allgather(mean.tobytes())[0] for b in comm.allgather(mean.tobytes()))
red.close()
if comm.rank == 0:
    print(f"ok nodes={getattr(red, 'nodes', 1)} direct={getattr(red, 'direct', None)}")
