"""Replicated DQN engine: a Q-network replica, vectorised envs and a replay shard per rank.

Modules, one job each: ``network`` (MLP, flat gradient buffer, checksums), ``replay``
(replay shard), ``nstep`` (n-step returns), ``envs`` (gymnasium envs, greedy evaluation),
``trainer`` (per-rank actor/learner with exact ``state_dict``), ``exchange`` (sync and
overlapped allreduce), ``param_server`` (asynchronous parameter server), ``device``
(threads and GPU per rank), ``loop`` (the training loop), ``output`` (curve, result file),
``run`` (the engine entry point).
"""
