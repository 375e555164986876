"""MPI script: sums from ``vector_allreduce`` against a float64 sum of the gathered vectors.

usage: vector_allreduce_check.py KIND RANKS_PER_NODE DIRECT_MAX LAG
Every rank posts 300 random vectors, keeping up to LAG reductions in flight, with random
short sleeps so ranks drift apart (a post must never overwrite a slot another rank still
reads); every collected sum must match the reference and be the same bits on every rank.
Rank 0 prints "ok nodes=N direct=D" when all agree.
"""

import sys
import time
from collections import deque

import numpy as np
from mpi4py import MPI

from hpcql.vector_allreduce import NodeAllreduce, vector_allreduce

comm = MPI.COMM_WORLD
kind, ranks_per_node, direct_max, lag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = 1001  # odd: chunks of uneven length
if kind == "shared-memory":
    red = NodeAllreduce(comm, n, lag, ranks_per_node, direct_max)
else:
    red = vector_allreduce(kind, comm, n, lag)  # type: ignore[arg-type]
rng = np.random.default_rng(comm.rank)
pending: deque = deque()


def check(seq: int, ref: np.ndarray, it: int) -> None:
    out = np.full(n, np.nan, dtype=np.float32)
    red.collect(seq, out)
    err = float(np.max(np.abs(out - ref)))
    assert err < 1e-4, (comm.rank, it, err)
    bits = comm.allgather(out.tobytes())
    assert all(b == bits[0] for b in bits), (comm.rank, it, "ranks differ")


for it in range(300):
    vec = rng.standard_normal(n).astype(np.float32)
    ref = np.sum(np.array(comm.allgather(vec), dtype=np.float64), axis=0)
    if rng.random() < 0.1:
        time.sleep(0.002)
    pending.append((red.post(vec), ref, it))
    red.progress()
    while len(pending) > lag:
        check(*pending.popleft())
while pending:
    check(*pending.popleft())
blocking = np.arange(n, dtype=np.float32) * (comm.rank + 1)
red.allreduce(blocking)
assert np.array_equal(blocking, np.arange(n, dtype=np.float32) * (comm.size * (comm.size + 1) // 2))
mean = rng.standard_normal(n).astype(np.float32)  # the mean: the float32 sum divided in float32
want = np.sum(np.array(comm.allgather(mean), dtype=np.float64), axis=0) / comm.size
red.allreduce(mean, divisor=comm.size)
assert float(np.max(np.abs(mean - want))) < 1e-5, "mean"
assert all(b == comm.allgather(mean.tobytes())[0] for b in comm.allgather(mean.tobytes()))
red.close()
if comm.rank == 0:
    print(f"ok nodes={getattr(red, 'nodes', 1)} direct={getattr(red, 'direct', None)}")
