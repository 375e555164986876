"""hpcql: MPI-based batch toolkit for Q-learning and dynamic programming at scale."""

__version__ = "0.1.0"
