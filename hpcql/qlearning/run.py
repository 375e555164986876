"""Run a sharded Q-learning job: build the shard, learn, evaluate, write result and figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcql.comm import collective
from hpcql.config import Config, QLearningAlgo
from hpcql.console import Console
from hpcql.errors import BadInput
from hpcql.faults import FaultInjector
from hpcql.qlearning.control import QLearningControl
from hpcql.qlearning.evaluate import Evaluator
from hpcql.qlearning.learner import Learner, start_update_chance
from hpcql.qlearning.monitor import T, Monitor
from hpcql.qlearning.rebalance import Rebalancer
from hpcql.results import common_attrs, write_tabular_result
from hpcql.tabular.problem import build_problem, repartition
from hpcql.tabular.run import describe_problem
from hpcql.timing import PhaseTimer


def check_algo(algo: QLearningAlgo) -> None:
    """Config combinations pydantic cannot express (same on every rank)."""
    if algo.budget_updates == 0 and algo.budget_seconds == 0:
        raise BadInput("[algo] budget_updates / budget_seconds: one of them must be > 0", agreed=True)


def run_qlearning(cfg: Config, comm: MPI.Comm, console: Console) -> Path:
    """The whole Q-learning job (collective). Returns the result path."""
    algo = cfg.algo
    assert isinstance(algo, QLearningAlgo)
    check_algo(algo)
    t0 = time.perf_counter()
    timer = PhaseTimer()
    with timer.phase("io"):
        problem = build_problem(cfg, comm)
        control = QLearningControl(cfg, comm, console, timer)
        resume_offsets = control.resume_offsets()
        if resume_offsets is not None and not np.array_equal(resume_offsets, problem.offsets):
            problem, _ = repartition(problem, resume_offsets)  # the partition the checkpoint was cut to
    describe_problem(problem, console)
    learner = collective(comm, lambda: Learner(problem, algo, cfg.run.seed))
    update_chance = start_update_chance(learner)
    with timer.phase("io"):
        control.clear_if_fresh()  # every check above has passed
        control.restore_learner(learner)
    balancing = algo.rebalance_every > 0 and comm.size > 1
    unit = "rounds" if algo.mode == "sync" else "reductions"
    console.info(f"q-learning ({algo.mode}): {learner.total_agents:,} agents, budget "
                 f"{algo.budget_updates:,} updates" + (f" / {algo.budget_seconds:g} s" if algo.budget_seconds else "")
                 + f", exchange every {algo.exchange_every} steps, starts {algo.starts}"
                 + (f", load balance check every {algo.rebalance_every} {unit}" if balancing else ""))
    evaluator = Evaluator(problem, min(algo.tol, 1e-6), algo.max_iterations, algo.start_states, timer)
    faults = FaultInjector(cfg.debug, comm.rank)
    rebalancer = Rebalancer(algo.rebalance_every, algo.rebalance_threshold)
    control.attach(evaluator, rebalancer)
    t_learn = time.perf_counter()
    monitor = Monitor(algo, comm.size, console, t_learn, update_chance)
    try:
        start_totals = control.restore_monitor(monitor)
        if algo.mode == "sync":
            from hpcql.qlearning.sync_loop import run_sync

            totals = run_sync(learner, monitor, evaluator, timer, faults, control, start_totals, rebalancer)
        else:
            from hpcql.qlearning.async_loop import run_async

            totals = run_async(learner, monitor, evaluator, timer, faults, control, start_totals, rebalancer)
        learn_seconds = time.perf_counter() - t_learn
        final = evaluator.evaluate(learner.q)
        monitor.record(totals, final, force=True)
    finally:
        monitor.close()

    problem = learner.problem  # the partition may have been recut during the run
    q = learner.q
    policy = np.argmax(q, axis=1).astype(np.int64) if q.size else np.zeros(0, dtype=np.int64)
    v = q.max(axis=1) if q.size else np.zeros(0)
    per_rank_updates = np.array(comm.allgather(learner.updates), dtype=np.int64)
    per_rank_rounds = np.array(comm.allgather(learner.rounds), dtype=np.int64)
    wall = time.perf_counter() - t0
    phases = timer.aggregate(comm)
    attrs = common_attrs(cfg, comm, wall, phases) | {
        "iterations": int(totals[T["updates"]]),
        "residual": float(final["gap_start"]),
        "gamma": problem.gamma,
        "num_states": problem.shard.num_states,
        "num_actions": problem.shard.num_actions,
        "updates": int(totals[T["updates"]]),
        "updates_per_rank": per_rank_updates,
        "rounds_per_rank": per_rank_rounds,
        "rebalances": rebalancer.count,
        "migrated": int(totals[T["moved"]]),
        "agents": int(learner.total_agents),
        "agents_final": int(totals[T["agents"]]),
        "learn_seconds": learn_seconds,
        "updates_per_second": float(totals[T["updates"]]) / max(learn_seconds, 1e-12),
        "start_state": int(algo.start_states[0]),
    } | final
    history = monitor.history()
    history = comm.bcast(history, root=0)
    out_dir = Path(cfg.run.out_dir)
    with timer.phase("io"):
        path = write_tabular_result(cfg, comm, problem.offsets, q, v, policy, attrs, history)
    for f in monitor.write(out_dir, f"{cfg.run.name}: q-learning ({algo.mode}, {comm.size} ranks)", cfg.run.plots):
        console.info(f"wrote {f}")
    console.info(f"done: {int(totals[T['updates']]):,} updates in {learn_seconds:.2f} s "
                 f"({attrs['updates_per_second'] / comm.size:.3g} updates/s/rank), "
                 f"{int(totals[T['moved']]):,} migrations"
                 + (f", {rebalancer.count} recut(s) (busiest rank "
                    f"{max(per_rank_updates) / max(1, sum(per_rank_updates)):.0%} of the updates)" if balancing else "")
                 + f"; greedy V(start) {final['greedy_value_start']:.6g}, "
                 f"optimal {final['optimal_value_start']:.6g}, gap {100 * final['gap_start']:.3f}%")
    rows = [[p, f"{t['min']:.3f}", f"{t['mean']:.3f}", f"{t['max']:.3f}"] for p, t in phases.items() if t["max"] > 0]
    console.table("phase times over ranks (s):", ["phase", "min", "mean", "max"], rows)
    console.info(f"result: {path}")
    problem.halo.free()
    return path
