"""Sharded tabular engine: Bellman kernels and the model-based solvers."""
