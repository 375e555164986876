"""Run a model-based tabular job: build the shard, solve, write result and figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcql.checkpoint import CheckpointStore
from hpcql.comm import collective
from hpcql.config import Config, PolicyIterationAlgo
from hpcql.console import Console
from hpcql.faults import FaultInjector
from hpcql.results import common_attrs, write_tabular_result
from hpcql.tabular.control import RunControl
from hpcql.tabular.problem import ShardedProblem, build_problem
from hpcql.tabular.solution import Solution, final_q
from hpcql.tabular.value_iteration import value_iteration_sync
from hpcql.timing import PhaseTimer


HEATMAP_MAX_STATES = 16_000_000  # the heatmap reads V and the policy whole on rank 0


def solve(cfg: Config, problem: ShardedProblem, console: Console, timer: PhaseTimer,
          control: RunControl) -> Solution:
    """Dispatch to the configured solver."""
    algo = cfg.algo
    faults = FaultInjector(cfg.debug, problem.comm.rank)
    label = "sweep" if not isinstance(algo, PolicyIterationAlgo) else "outer"
    span = getattr(algo, "stopping", "sup") == "span"
    sync_vi = not isinstance(algo, PolicyIterationAlgo) and algo.mode != "async"
    with timer.phase("io"):  # set-up: numba's start is not the first sweep's compute
        if sync_vi and problem.use_tiles(algo.sweep_layout):
            console.info("sweeps run on column-blocked tiles (algo.sweep_layout)")
        problem.load_kernel("bellman_sweep_range" if sync_vi else "bellman_sweep")
    tracker = console.tracker(label, target=problem.stop_threshold(algo.tol) * (2.0 if span else 1.0))
    try:
        if isinstance(algo, PolicyIterationAlgo):
            from hpcql.tabular.policy_iteration import policy_iteration

            return policy_iteration(problem, algo, timer, tracker, faults, control)
        if algo.mode == "async":
            from hpcql.tabular.async_vi import value_iteration_async

            return value_iteration_async(problem, algo.tol, algo.max_iterations, timer, tracker, faults, control)
        return value_iteration_sync(problem, algo.tol, algo.max_iterations, timer, tracker, faults, control,
                                    span=algo.stopping == "span")
    finally:
        tracker.close()


def describe_problem(problem: ShardedProblem, console: Console) -> None:
    """One line on the model and the partition."""
    comm, sh = problem.comm, problem.shard
    ghosts = comm.gather(problem.halo.n_ghost)
    neigh = comm.gather(problem.halo.neighbours)
    nnz = problem.global_nnz
    if comm.rank == 0:
        console.info(
            f"MDP: {sh.num_states:,} states x {sh.num_actions} actions, {nnz:,} transitions, gamma {problem.gamma}; "
            f"{comm.size} rank(s), ghosts/rank {min(ghosts)}..{max(ghosts)}, neighbours/rank {min(neigh)}..{max(neigh)}"
        )


def summarize(console: Console, phases: dict[str, dict[str, float]], sol: Solution, wall: float,
              nnz: int, path: Path) -> None:
    """Final summary: convergence and per-phase times over ranks."""
    status = "converged" if sol.converged else "NOT converged (max_iterations reached)"
    console.info(f"{status}: {sol.iterations} iterations, residual {sol.residual:.3e}, {wall:.2f} s wall")
    sweeps = sol.extra.get("sweeps", sol.iterations)
    compute = phases.get("compute", {}).get("max", 0.0)
    if compute > 0:
        console.info(f"throughput: {sweeps * nnz / max(wall, 1e-12) / 1e6:.1f} M transitions/s overall")
    rows = [[p, f"{t['min']:.3f}", f"{t['mean']:.3f}", f"{t['max']:.3f}"] for p, t in phases.items() if t["max"] > 0]
    console.table("phase times over ranks (s):", ["phase", "min", "mean", "max"], rows)
    console.info(f"result: {path}")


def make_control(cfg: Config, comm: MPI.Comm, console: Console, offsets, timer: PhaseTimer) -> RunControl:
    """Checkpoint store and the checkpoint to resume from (newest valid), if any."""
    store = CheckpointStore(comm, cfg, engine="tabular")
    if cfg.checkpoint.fresh:
        store.clear()
    resumed = store.latest(console.warn) if cfg.checkpoint.enabled else None
    if resumed is not None:
        mine = (int(offsets[comm.rank]), int(offsets[comm.rank + 1]))
        collective(comm, lambda: resumed.require("V", (int(offsets[-1]),), finite_rows=mine))
        console.info(f"resuming from {resumed.path} (step {resumed.step}, written by {resumed.ranks} rank(s))")
    return RunControl(store, cfg.checkpoint, offsets, timer, resumed)


def run_tabular(cfg: Config, comm: MPI.Comm, console: Console) -> Path:
    """The whole tabular job (collective). Returns the result path."""
    t0 = time.perf_counter()
    timer = PhaseTimer()
    with timer.phase("io"):
        problem = build_problem(cfg, comm)
        control = make_control(cfg, comm, console, problem.offsets, timer)
    describe_problem(problem, console)
    sol = solve(cfg, problem, console, timer, control)
    q, v, policy = final_q(problem, sol.v_local)
    wall = time.perf_counter() - t0
    phases = timer.aggregate(comm)
    attrs = common_attrs(cfg, comm, wall, phases) | {
        "iterations": sol.iterations,
        "residual": sol.residual,
        "converged": sol.converged,
        "gamma": problem.gamma,
        "tol": cfg.algo.tol,
        "num_states": problem.shard.num_states,
        "num_actions": problem.shard.num_actions,
    } | sol.extra
    history = {k: np.array([h[k] for h in sol.history]) for k in (sol.history[0] if sol.history else {})}
    with timer.phase("io"):
        path = write_tabular_result(cfg, comm, problem.offsets, q, v, policy, attrs, history)
    summarize(console, phases, sol, wall, problem.global_nnz, path)
    if cfg.run.plots and problem.shard.grid_shape is not None and problem.shard.num_states > HEATMAP_MAX_STATES:
        console.info(f"heatmap skipped: {problem.shard.num_states:,} states is over the "
                     f"{HEATMAP_MAX_STATES:,} rank 0 would read for it")
    elif cfg.run.plots and problem.shard.grid_shape is not None and comm.rank == 0:
        from hpcql.plots import value_heatmap
        from hpcql.h5io import read_rows

        n = problem.shard.num_states
        png = value_heatmap(read_rows(path, "V", 0, n), read_rows(path, "policy", 0, n),
                            problem.shard.grid_shape, path.with_name("value_heatmap.png"),
                            title=f"{cfg.run.name}: V and greedy policy")
        console.info(f"heatmap: {png}")
    problem.halo.free()
    return path
