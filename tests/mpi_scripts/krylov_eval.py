"""MPI script: distributed Krylov evaluation of a fixed policy; rank 0 saves V.

usage: krylov_eval.py MDP.h5 POLICY.npy OUT.npy METHOD GAMMA
"""

import sys

import numpy as np
from mpi4py import MPI

from hpcql.mdp.mdpfile import read_mdp_shard
from hpcql.tabular.policy_iteration import evaluate_policy
from hpcql.tabular.problem import make_problem

mdp, pol_path, out, method, gamma = sys.argv[1:6]
comm = MPI.COMM_WORLD
shard, offsets = read_mdp_shard(mdp, comm)
problem = make_problem(shard, offsets, float(gamma), comm)
policy = np.load(pol_path)[shard.row_start: shard.row_stop].astype(np.int64)
res = evaluate_policy(problem, policy, atol=1e-13, method=method, restart=40, max_iter=5000)
v = comm.gather(res.x)
if comm.rank == 0:
    assert res.converged, res
    np.save(out, np.concatenate(v))
