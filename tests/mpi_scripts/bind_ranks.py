"""MPI script: ``affinity.bind_ranks`` / ``node_share`` under a given starting affinity.

usage: bind_ranks.py MODE START   MODE: auto|off; START: "same" (as launched, unbound) or
"own" (each rank first pins itself to one CPU, as ``mpiexec -bind-to core`` would).
Rank 0 prints one JSON line: {"before": [...], "after": [...], "returned": [...], "threads": [...]}
with one entry per rank.
"""

import json
import os
import sys

from mpi4py import MPI

from hpcql.affinity import bind_ranks, node_share

comm = MPI.COMM_WORLD
mode, start = sys.argv[1], sys.argv[2]
if start == "own":
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, [cpus[comm.rank % len(cpus)]])
before = sorted(os.sched_getaffinity(0))
returned = bind_ranks(comm, mode)
after = sorted(os.sched_getaffinity(0))
threads = node_share(comm)[1]
rows = comm.gather((before, after, returned, threads))
if comm.rank == 0:
    print(json.dumps({k: [r[i] for r in rows] for i, k in enumerate(("before", "after", "returned", "threads"))}))
