"""MPI script: ``ReplicaCheck`` is not a synchronising point, and it catches a diverged replica.

usage: replica_check.py LATE_RANK BAD_RANK
Every rank builds the same small network. Check 1 (update 10): LATE_RANK posts 0.5 s after the
others; every other rank's ``post`` must return at once (non-blocking). Check 2 (update 20):
BAD_RANK's parameters are nudged first (BAD_RANK = -1: none); ``complete`` must raise on every
rank alike, naming update 20 and BAD_RANK. Rank 0 prints, for every rank, "rank R post_s=S raised=MESSAGE|none".
"""

import sys
import time

import torch
from mpi4py import MPI
from torch import nn

from hpcql.dqn.exchange import ReplicaCheck

comm = MPI.COMM_WORLD
late, bad = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
check = ReplicaCheck(comm)
if comm.rank == late:
    time.sleep(0.5)
t0 = time.perf_counter()
check.post(net, 10)
post_s = time.perf_counter() - t0
for _ in range(100):  # updates in between: the check progresses
    check.poll()
if comm.rank == bad:
    with torch.no_grad():
        net[0].weight.view(-1)[3] += 1e-6
raised = "none"
try:
    check.post(net, 20)  # compares check 1 (identical), posts check 2
    check.complete()
except RuntimeError as exc:
    raised = str(exc)
for r, (s, msg) in enumerate(comm.gather((post_s, raised)) or []):  # one writer: no interleaving
    print(f"rank {r} post_s={s:.3f} raised={msg}", flush=True)
