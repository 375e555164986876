"""The DQN engine entry point: ``run_dqn(cfg, comm, console)`` (collective)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from hpcql.comm import collective
from hpcql.config import Config, DQNAlgo, GymEnv
from hpcql.console import Console
from hpcql.dqn.control import DQNControl
from hpcql.dqn.device import setup_device
from hpcql.dqn.envs import check_spaces, make_env
from hpcql.dqn.loop import COMM_PHASES, DQNLoop, scheme_of
from hpcql.dqn.network import module_to_numpy
from hpcql.dqn.output import plot_curve, write_curve_csv, write_result
from hpcql.dqn.trainer import ReplicaTrainer
from hpcql.errors import BadInput, Checkpointed
from hpcql.results import common_attrs, result_path
from hpcql.timing import PhaseTimer

DEFAULT_GAMMA = 0.99


def validate(cfg: Config) -> tuple[int, int]:
    """(observation size, number of actions); config mistakes are ``BadInput``."""
    if not isinstance(cfg.env, GymEnv):
        raise BadInput(f'[env] kind: dqn needs kind = "gymnasium" (got {cfg.env.kind!r})')
    env = make_env(cfg.env)
    try:
        return check_spaces(env, cfg.env.id)
    finally:
        env.close()


def broadcast_params(comm: MPI.Comm, trainer: ReplicaTrainer) -> None:
    """Rank 0's initial weights on every replica, target included."""
    flat = trainer.flat.gather_params()
    comm.Bcast(flat, root=0)
    trainer.flat.scatter_params(flat)
    trainer.sync_target()


def summarize(console: Console, loop: DQNLoop, phases: dict[str, dict[str, float]], staleness: list[int],
              transfer: float | None, blocked: float | None, wall: float, path: Path) -> dict[str, float]:
    """Final lines on rank 0; returns the summary numbers stored as attributes."""
    algo: DQNAlgo = loop.algo
    last = loop.curve[-1]
    mean = lambda p: phases.get(p, {}).get("mean", 0.0)  # noqa: E731
    comm_s = sum(mean(p) for p in COMM_PHASES)
    update_s = max(mean("compute") + comm_s, 1e-12)
    comm_fraction = comm_s / update_s
    transfer_fraction = transfer / update_s if transfer is not None else -1.0
    # blocked on other replicas: sync and overlap, the communication time beyond the slowest
    # replica's; the parameter server, the time blocked until the master's reply is there
    waiting = comm_fraction - transfer_fraction if transfer is not None else mean("wait") / update_s
    stats = {
        "final_eval_mean": last["eval_return_mean"],
        "env_steps": int(last["env_steps"]),
        "updates": int(last["updates"]),
        "comm_fraction": comm_fraction,
        # sync and overlap: each reduction's least communication time over ranks (the slowest
        # replica's: sync, the Allreduce's transfer proper; overlap, posting, any wait for the
        # reduction itself and handing it over), without waiting for a slower replica
        "transfer_fraction": transfer_fraction,
        "waiting_fraction": waiting,
        "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
        "staleness_max": int(np.max(staleness)) if staleness else 0,
        # overlap: share of the reductions that were not complete when their gradient was due
        "blocked_fraction": blocked if blocked is not None else -1.0,
    }
    if loop.solved_at is not None:
        console.info(f"solved: eval mean >= {algo.target_return:g} after {loop.solved_at[0]:,} env steps, "
                     f"{loop.solved_at[1]:.1f} s")
    elif algo.target_return is not None:
        console.info(f"NOT solved: eval mean {last['eval_return_mean']:.1f} < {algo.target_return:g} "
                     f"after {last['env_steps']:,} env steps")
    console.info(f"{stats['env_steps']:,} env steps, {stats['updates']:,} updates, {wall:.1f} s wall; "
                 f"communication {100 * comm_fraction:.1f}% of update time"
                 + (f" ({100 * transfer_fraction:.1f}% on the slowest replica, the rest waiting for it)"
                    if transfer is not None and loop.comm.size > 1 else ""))
    if loop.scheme != "sync":
        console.info(f"staleness seen ({loop.scheme}): mean {stats['staleness_mean']:.2f}, "
                     f"max {stats['staleness_max']} updates over {len(staleness)} gradients"
                     + (f"; {100 * blocked:.1f}% of the reductions were not complete when due" if blocked is not None
                        else ""))
    rows = [[p, f"{t['min']:.3f}", f"{t['mean']:.3f}", f"{t['max']:.3f}"] for p, t in phases.items() if t["max"] > 0]
    console.table("phase times over ranks (s):", ["phase", "min", "mean", "max"], rows)
    console.info(f"result: {path}")
    return stats


def run_dqn(cfg: Config, comm: MPI.Comm, console: Console) -> Path:
    """The whole DQN job (collective). Returns the result path."""
    t0 = time.perf_counter()
    timer = PhaseTimer()
    algo: DQNAlgo = cfg.algo  # type: ignore[assignment]
    obs_dim, num_actions = collective(comm, lambda: validate(cfg))
    scheme = scheme_of(algo)
    gamma = algo.gamma if algo.gamma is not None else DEFAULT_GAMMA
    device, threads = setup_device(comm, "cpu" if algo.engine == "numpy" else algo.device,
                                   deterministic=scheme != "parameter-server")
    if algo.device == "cuda" and device.type != "cuda":
        console.warn("[algo] device = \"cuda\" but CUDA is not available: using the CPU")
    trainer = collective(comm, lambda: ReplicaTrainer(algo, cfg.env, obs_dim, num_actions, gamma,
                                                      cfg.run.seed, comm.rank, device))
    broadcast_params(comm, trainer)
    console.info(f"DQN on {cfg.env.id}: obs {obs_dim}, {num_actions} actions, MLP {algo.hidden}; {scheme}; "
                 f"{comm.size} rank(s) x {cfg.env.num_envs} env(s); batch {algo.batch_size}/rank"
                 + f" = {algo.batch_size * comm.size} global"
                 + (" (the server steps on the mean of that many ranks' gradients)" if scheme == "parameter-server"
                    else "")
                 + f"; device {device}, {trainer.engine} engine, {threads} thread(s)/rank")
    loop = DQNLoop(cfg, comm, trainer, timer, console)
    control = DQNControl(cfg, comm, console, timer)
    try:
        control.restore(loop)
        loop.run(control)
    except (Checkpointed, BadInput) as exc:  # every rank stops here together: free the reducer
        if isinstance(exc, Checkpointed) or exc.agreed:
            loop.release()
        raise
    control.close()
    loop.release()
    staleness = loop.staleness()
    transfer = loop.exchange.transfer_seconds() if scheme in ("sync", "overlap") else None
    blocked = loop.blocked_fraction() if scheme == "overlap" else None
    apply_s = comm.allreduce(loop.apply_seconds) / comm.size  # mean over ranks (0 for the parameter server)
    wall = time.perf_counter() - t0
    phases = timer.aggregate(comm)
    path = result_path(cfg)
    out = Path(cfg.run.out_dir)
    attrs = common_attrs(cfg, comm, wall, phases)
    if comm.rank == 0:
        stats = summarize(console, loop, phases, staleness, transfer, blocked, wall, path)
        attrs |= stats | {
            "iterations": stats["updates"], "gamma": gamma, "env_id": cfg.env.id, "obs_dim": obs_dim,
            "num_actions": num_actions, "hidden": list(algo.hidden), "scheme": scheme,
            "local_batch": algo.batch_size,
            "global_batch": algo.batch_size * comm.size,
            "num_envs_per_rank": cfg.env.num_envs, "torch_threads": threads, "device": str(device),
            "engine": trainer.engine,
            # clipping and Adam per update (the averaging inside them on a node), mean over ranks
            "apply_us_per_update": 1e6 * apply_s / max(stats["updates"], 1),
            "solved": loop.solved_at is not None,
            "steps_to_solve": loop.solved_at[0] if loop.solved_at else -1,
            "seconds_to_solve": loop.solved_at[1] if loop.solved_at else -1.0,
        }
    with timer.phase("io"):
        def write() -> None:
            if comm.rank != 0:
                return
            write_result(path, module_to_numpy(trainer.q), loop.eval_returns, loop.curve, attrs)
            write_curve_csv(out / "learning_curve.csv", loop.curve)
            if cfg.run.plots:
                plot_curve(out / "learning_curve.png", loop.curve, f"{cfg.run.name}: DQN on {cfg.env.id} "
                           f"({scheme}, {comm.size} rank(s))", algo.target_return)

        collective(comm, write)
    console.info(f"learning curve: {out / 'learning_curve.csv'}")
    trainer.vec.close()
    return path
