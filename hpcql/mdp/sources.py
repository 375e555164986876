"""Build this rank's MDP shard from the ``[env]`` config (collective)."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.comm import collective
from hpcql.config import Config, GridworldEnv, GymTabularEnv, MdpFileEnv, RandomEnv
from hpcql.errors import BadInput
from hpcql.mdp.gridworld import gridworld_shard
from hpcql.mdp.gym_tabular import gym_tabular_shard
from hpcql.mdp.mdpfile import read_mdp_shard
from hpcql.mdp.random_mdp import random_mdp_shard
from hpcql.mdp.shard import MdpShard, slice_shard, state_nnz_cumulative
from hpcql.partition import uniform_partition, weighted_partition


def build_shard(cfg: Config, comm: MPI.Comm) -> tuple[MdpShard, np.ndarray]:
    """This rank's rows and the global partition ``offsets`` (length size+1)."""
    env, rank, size = cfg.env, comm.rank, comm.size
    if isinstance(env, MdpFileEnv):
        return read_mdp_shard(env.path, comm)
    if isinstance(env, GridworldEnv):
        offsets = uniform_partition(env.rows * env.cols, size)  # constant entries per state
        shard = collective(comm, lambda: gridworld_shard(env, cfg.run.seed, int(offsets[rank]), int(offsets[rank + 1])))
        return shard, offsets
    if isinstance(env, RandomEnv):
        offsets = uniform_partition(env.states, size)
        shard = collective(comm, lambda: random_mdp_shard(
            env.states, env.actions, env.successors, cfg.run.seed, int(offsets[rank]), int(offsets[rank + 1]),
            env.discount, env.local_fraction))
        return shard, offsets
    if isinstance(env, GymTabularEnv):
        full = collective(comm, lambda: gym_tabular_shard(env))  # toy-text models are tiny
        offsets = weighted_partition(state_nnz_cumulative(full), size)
        return slice_shard(full, int(offsets[rank]), int(offsets[rank + 1])), offsets
    raise BadInput(f"[env] kind: {env.kind!r} has no tabular model; use it with algo.name = \"dqn\"", agreed=True)
