"""Sharded model-free Q-learning: agents live on the rank owning their state and migrate.

Modules, one job each: ``rng`` (counter-based per-agent random numbers),
``kernels`` (numba agent stepping), ``agents`` (agent arrays, packing for
migration), ``schedules`` (epsilon), ``sync_loop`` / ``async_loop`` (the two
communication modes), ``learner`` (the rank's learning state, ``state_dict``),
``evaluate`` (exact value of the greedy policy and the optimum), ``metrics``
(CSV / console / plot), ``run`` (the engine entry point).
"""
