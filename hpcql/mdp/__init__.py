"""MDP sources: each builds one rank's shard (its rows) without the whole model."""

from hpcql.mdp.mdpfile import read_mdp_shard, write_mdp
from hpcql.mdp.shard import MdpShard

__all__ = ["MdpShard", "read_mdp_shard", "write_mdp"]
