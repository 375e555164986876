#!/usr/bin/env python
"""Time-to-solve CartPole-v1: Stable-Baselines3 DQN (rl-baselines3-zoo hyperparameters) vs hpcql DQN.

In one run, for several seeds: SB3 DQN, then hpcql at each rank count in sync, async/overlap
and async/parameter-server modes, each until the greedy evaluation mean over 20 episodes
reaches 475 (checked every --eval-every env steps) or --budget env steps are spent. Prints a
table of median time-to-solve and env-steps-to-solve, wall time per env step (summed over the
solved runs, so independent of how many steps a seed needed), the fraction of hpcql's update
time spent communicating, the part of it on the slowest replica (sync and overlap: per
reduction, the least time any rank spent on it: sync, the allreduce's transfer proper; overlap,
posting, waiting for the reduction itself and handing it over; what overlap leaves unhidden),
the rest, waiting for slower replicas (parameter server: blocked until the master's reply), in
overlap mode the share of reductions not complete when due, the update time and its clip +
Adam part per update, and writes everything as JSON. On a node the optimizer's passes add the replicas'
gradients up in place, so after the table the averaging's own cost is printed: each multi-rank
variant's clip + Adam time less sync x1's, beside the communication share it belongs to.
``--allreduce shared-memory,mpi`` runs the multi-rank sync/overlap variants with both gradient
reducers (MPI's own Allreduce as baseline).

    python scripts/bench_dqn.py --seeds 2 --budget 80000 --ranks 1,2 --json bench_dqn.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bench_common import mpiexec_cmd  # scripts/ is on sys.path when run as a script

TARGET = 475.0
EVAL_EPISODES = 20
EVAL_SEED_BASE = 10_000  # SB3 evaluation episode i uses env seed EVAL_SEED_BASE + i

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1 (n_timesteps 5e4 sets the epsilon schedule)
ZOO_CARTPOLE = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
ZOO_TIMESTEPS = 50_000
# hpcql runs the shipped job (the same zoo hyperparameters; global data rate and batch fixed across ranks)
HPCQL_JOB = Path(__file__).resolve().parents[1] / "jobs" / "dqn-cartpole.toml"

def run_sb3(seed: int, budget: int, eval_every: int) -> dict:
    """SB3 DQN with the zoo hyperparameters; stops at the first evaluation reaching TARGET."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    eval_env = gym.make("CartPole-v1")

    def evaluate(model: DQN) -> float:
        returns = []
        for i in range(EVAL_EPISODES):
            obs, _ = eval_env.reset(seed=EVAL_SEED_BASE + i)
            done, ret = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = eval_env.step(int(action))
                ret += float(r)
                done = term or trunc
            returns.append(ret)
        return float(np.mean(returns))

    class StopAtTarget(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.solved: tuple[int, float] | None = None
            self.t0 = time.perf_counter()
            self.last_eval = 0

        def _on_step(self) -> bool:
            if self.num_timesteps - self.last_eval < eval_every:
                return True
            self.last_eval = self.num_timesteps
            if evaluate(self.model) >= TARGET:
                self.solved = (self.num_timesteps, time.perf_counter() - self.t0)
                return False
            return True

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, verbose=0, device="cpu", **ZOO_CARTPOLE)
    # keep the zoo's epsilon schedule (fraction of 5e4 steps) whatever the budget
    model.exploration_schedule = lambda progress: max(
        ZOO_CARTPOLE["exploration_final_eps"],
        1.0 - (1.0 - progress) * budget / (ZOO_CARTPOLE["exploration_fraction"] * ZOO_TIMESTEPS)
        * (1.0 - ZOO_CARTPOLE["exploration_final_eps"]))
    cb = StopAtTarget()
    t0 = time.perf_counter()
    model.learn(total_timesteps=budget, callback=cb)
    wall = time.perf_counter() - t0
    return {"solved": cb.solved is not None, "steps": cb.solved[0] if cb.solved else None,
            "seconds": cb.solved[1] if cb.solved else None, "wall": wall, "comm_fraction": 0.0}


def hpcql_cmd(out: Path, seed: int, budget: int, eval_every: int, ranks: int, mode: str, scheme: str,
              job: Path = HPCQL_JOB, extra: dict | None = None, bind: bool = True) -> list[str]:
    """``job`` under mpiexec, writing to ``out``; global data rate (4 envs) and batch (64) fixed across
    ranks; ``extra``: more --set; ``bind``: False sets ``run.bind_cores = off`` (ranks left unbound)."""
    sets = {"run.out_dir": out, "run.progress": "none", "run.plots": "false", "run.seed": seed,
            "env.num_envs": max(1, 4 // ranks), "algo.batch_size": max(16, 64 // ranks), "algo.mode": mode,
            "algo.async_scheme": scheme, "algo.total_steps": budget, "algo.eval_every": eval_every,
            "algo.eval_episodes": EVAL_EPISODES, "algo.target_return": TARGET, "checkpoint.enabled": "false"}
    sets |= {"run.bind_cores": "auto" if bind else "off"} | (extra or {})
    return mpiexec_cmd(ranks) + [sys.executable, "-m", "hpcql", "run", str(job)] + [
        x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def run_twins(seed: int, steps: int, timeout: float, job: Path = HPCQL_JOB, extra: dict | None = None) -> dict:
    """The machine's own skew between cores: two identical 1-rank runs (the per-rank settings of a
    2-rank run: 2 envs, batch 32; the same seed, so bitwise the same work) at once, one pinned to
    each of CPUs 0 and 1, evaluated every 500 env steps (2 episodes). Per interval between
    evaluations, a pair in lockstep would take the slower twin's time and its faster rank wait
    the difference: ``lockstep_waiting`` = sum |t0 - t1| / 2 over sum max(t0, t1), the share of a
    lockstep pair's time its ranks (on average) would wait, with no communication at all."""
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        return {"error": "needs CPUs 0 and 1"}
    sets = (extra or {}) | {"env.num_envs": 2, "algo.batch_size": 32, "algo.eval_every": 500, "algo.eval_episodes": 2,
                            "algo.target_return": 1e9, "run.bind_cores": "off"}
    with tempfile.TemporaryDirectory(prefix="bench_dqn_twins_") as tmp:
        procs = [subprocess.Popen(hpcql_cmd(Path(tmp) / f"twin{c}", seed, steps, 500, 1, "sync", "overlap", job, sets),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"),
                                  preexec_fn=functools.partial(os.sched_setaffinity, 0, {c}))
                 for c in (0, 1)]
        try:
            errors = [p.communicate(timeout=timeout)[1] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return {"error": "timeout"}
        if any(p.returncode for p in procs):
            return {"error": "".join(errors)[-2000:]}
        walls = []
        for c in (0, 1):
            with h5py.File(Path(tmp) / f"twin{c}" / "result.h5", "r") as f:
                walls.append(np.diff(f["curve/wall_seconds"][:]))
    t0, t1 = walls
    n = min(len(t0), len(t1))
    t0, t1 = t0[2:n], t1[2:n]  # from the first updates on (learning starts at 1,000 env steps)
    ratio = t0 / t1
    return {"intervals": int(len(ratio)), "speed_ratio_p10_p50_p90": np.percentile(ratio, [10, 50, 90]).tolist(),
            "lockstep_waiting": float(np.abs(t0 - t1).sum() / 2 / np.maximum(t0, t1).sum())}


def run_hpcql(seed: int, budget: int, eval_every: int, ranks: int, mode: str, scheme: str, timeout: float,
              job: Path = HPCQL_JOB, extra: dict | None = None, bind: bool = True) -> dict:
    """``hpcql_cmd`` run until solved or the budget is spent; its result.h5 read back."""
    with tempfile.TemporaryDirectory(prefix="bench_dqn_") as tmp:
        out = Path(tmp) / "out"
        cmd = hpcql_cmd(out, seed, budget, eval_every, ranks, mode, scheme, job, extra, bind)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            return {"solved": False, "steps": None, "seconds": None, "wall": timeout, "error": "timeout"}
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"solved": False, "steps": None, "seconds": None, "wall": wall, "error": p.stderr[-2000:]}
        with h5py.File(out / "result.h5", "r") as f:
            a = f.attrs
            solved = bool(a["solved"])
            phases = json.loads(a["phase_seconds_json"])
            busy = sum(phases.get(k, {}).get("mean", 0.0) for k in ("compute", "exchange", "wait", "reduce"))
            updates = max(int(a["updates"]), 1)
            return {"solved": solved,
                    # update time (compute and communication, mean over ranks) and its clip + Adam part, per update
                    "update_us": 1e6 * busy / updates,
                    "apply_us": float(a["apply_us_per_update"]) if "apply_us_per_update" in a else None, "steps": int(a["steps_to_solve"]) if solved else None,
                    "seconds": float(a["seconds_to_solve"]) if solved else None, "wall": wall,
                    "comm_fraction": float(a["comm_fraction"]),
                    "transfer_fraction": float(a["transfer_fraction"]) if "transfer_fraction" in a else None,
                    "waiting_fraction": float(a["waiting_fraction"]) if "waiting_fraction" in a else None,
                    "staleness_mean": float(a["staleness_mean"]),
                    "blocked_fraction": float(a["blocked_fraction"]) if "blocked_fraction" in a else None,
                    "staleness_max": int(a["staleness_max"])}


def median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def print_averaging_cost(results: dict[str, list[dict]]) -> None:
    """On a node the optimizer's clip and Adam passes add the replicas' gradients up in place, so that
    part of the allreduce is inside ``apply us``: its cost is the multi-rank apply time less the
    1-rank one (the same passes over one gradient). Printed against each variant's update time,
    and with the communication share it belongs to."""
    base = median([r.get("apply_us") for r in results.get("hpcql sync x1", [])])
    if not base:
        return
    for name, runs in results.items():
        ap_us, up = median([r.get("apply_us") for r in runs]), median([r.get("update_us") for r in runs])
        c = median([r.get("comm_fraction") for r in runs])
        if name.startswith("hpcql") and " x1" not in name and "parameter-server" not in name and ap_us and up:
            extra = (ap_us - base) / up
            print(f"{name}: averaging inside clip + Adam {ap_us - base:+.1f} us per update against sync x1 "
                  f"({100 * extra:+.1f}% of update time); communication with it {100 * ((c or 0.0) + extra):.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="number of seeds (default 2)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 (default 0)")
    ap.add_argument("--budget", type=int, default=80_000, help="env-step budget per run (default 80000, as in tests)")
    ap.add_argument("--ranks", default="1,2", help="hpcql rank counts (default 1,2)")
    ap.add_argument("--eval-every", type=int, default=2500, help="env steps between evaluations (default 2500, as in tests)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per hpcql run (default 900)")
    ap.add_argument("--skip-sb3", action="store_true", help="hpcql only")
    ap.add_argument("--schemes", default="sync,overlap,parameter-server",
                    help="hpcql schemes to run (default sync,overlap,parameter-server)")
    ap.add_argument("--allreduce", default="shared-memory",
                    help="algo.allreduce values to compare for sync/overlap at more than 1 rank "
                         "(comma-separated; default shared-memory; 'shared-memory,mpi' adds MPI's Allreduce as a baseline)")
    ap.add_argument("--batch", default="fixed",
                    help="comma-separated: fixed (global batch 64 and 128 updates per round at every rank count: "
                         "64/r per rank) and/or per-rank (64 per rank, so the global batch grows with the ranks, "
                         "and 128/r updates per round with the target refreshed once per round; default fixed)")
    ap.add_argument("--job", type=Path, default=HPCQL_JOB, help="hpcql job file (default jobs/dqn-cartpole.toml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra hpcql --set override for every hpcql run (repeatable)")
    ap.add_argument("--json", default="bench_dqn.json", help="output JSON (default bench_dqn.json)")
    ap.add_argument("--twins", type=int, default=0, metavar="STEPS",
                    help="also measure the machine's own skew between CPUs 0 and 1: two identical 1-rank runs of "
                         "STEPS env steps at once, one per core, per seed (run_twins; default 0: not run)")
    ap.add_argument("--no-bind", action="store_true", help="run.bind_cores = off: ranks left unbound (MPICH mpiexec's default)")
    args = ap.parse_args()

    extra = dict(kv.split("=", 1) for kv in args.sets)
    schemes = {"sync": ("sync", "overlap"), "overlap": ("async", "overlap"),
               "parameter-server": ("async", "parameter-server")}
    variants: list[tuple[str, dict]] = [] if args.skip_sb3 else [("sb3-dqn (zoo)", {"kind": "sb3"})]
    for r in [int(x) for x in args.ranks.split(",")]:
        for label in args.schemes.split(","):
            mode, scheme = schemes[label]
            reducers = args.allreduce.split(",") if r > 1 and label != "parameter-server" else [None]
            batches = args.batch.split(",") if r > 1 else ["fixed"]
            for red in reducers:
                for batch in batches:
                    name = (f"hpcql {label} x{r}" + (f" ({red})" if len(reducers) > 1 else "")
                            + (" batch 64/rank" if batch == "per-rank" else ""))
                    sets = {"algo.allreduce": red} if red else {}
                    if batch == "per-rank":
                        sets |= {"algo.batch_size": 64, "algo.gradient_steps": 128 // r,
                                 "algo.target_update_every": 128 // r}
                    variants.append((name, {"kind": "hpcql", "ranks": r, "mode": mode, "scheme": scheme,
                                            "sets": sets}))
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    twins: list[dict] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if args.twins:
            twins.append(run_twins(seed, args.twins, args.timeout, args.job, extra) | {"seed": seed})
        for name, v in variants:
            if v["kind"] == "sb3":
                res = run_sb3(seed, args.budget, args.eval_every)
            else:
                res = run_hpcql(seed, args.budget, args.eval_every, v["ranks"], v["mode"], v["scheme"], args.timeout,
                                args.job, extra | v["sets"], not args.no_bind)
            res["seed"] = seed
            results[name].append(res)
            print(f"seed {seed} {name}: solved={res['solved']} steps={res['steps']} "
                  f"seconds={res['seconds'] and round(res['seconds'], 1)} wall={res['wall']:.1f}", flush=True)

    header = ["variant", "solved", "median s to solve", "x sb3", "median env steps", "ms per 1k env steps",
              "comm fraction", "slowest replica", "waiting", "not done when due (overlap)", "update us",
              "apply us"]
    rows = []
    sb3_s = median([r["seconds"] for r in results.get("sb3-dqn (zoo)", [])])
    pct = lambda v: f"{100 * v:.1f}%" if v is not None and v >= 0 else "-"  # noqa: E731
    for name, runs in results.items():
        s = median([r["seconds"] for r in runs])
        n = median([r["steps"] for r in runs])
        c = median([r.get("comm_fraction") for r in runs])
        tr = median([r.get("transfer_fraction") for r in runs])
        bl = median([r.get("blocked_fraction") for r in runs])
        wt = median([r.get("waiting_fraction") for r in runs])
        up, ap_us = median([r.get("update_us") for r in runs]), median([r.get("apply_us") for r in runs])
        solved = [r for r in runs if r["solved"]]
        # wall time per env step, summed over the solved runs: speed, whatever the seeds' luck in steps
        per_k = 1e6 * sum(r["seconds"] for r in solved) / sum(r["steps"] for r in solved) if solved else None
        rows.append([name, f"{len(solved)}/{len(runs)}", f"{s:.1f}" if s is not None else "-",
                     f"{sb3_s / s:.2f}" if s and sb3_s else "-", f"{n:,.0f}" if n is not None else "-",
                     f"{per_k:.0f}" if per_k is not None else "-", pct(c), pct(tr), pct(wt), pct(bl),
                     f"{up:.0f}" if up else "-", f"{ap_us:.1f}" if ap_us else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\nCartPole-v1 to greedy mean >= {TARGET:g} over {EVAL_EPISODES} episodes "
          f"(seeds {args.seeds}, budget {args.budget:,}, {os.cpu_count()} CPUs; medians over solved runs)")
    for row in [header] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    Path(args.json).write_text(json.dumps({"target": TARGET, "eval_episodes": EVAL_EPISODES, "seeds": args.seeds,
                                           "budget": args.budget, "zoo_hyperparameters": ZOO_CARTPOLE,
                                           "hpcql_job": str(args.job), "hpcql_sets": extra,
                                           "bind_cores": "off" if args.no_bind else "auto", "results": results,
                                           "twins": twins}, indent=2, default=str))
    print_averaging_cost(results)
    if twins:
        print("machine skew (two identical 1-rank runs at once, one per core; per 500 env steps): "
              + "; ".join(f"seed {t['seed']}: speed ratio p10/p50/p90 "
                          + "/".join(f"{x:.2f}" for x in t["speed_ratio_p10_p50_p90"])
                          + f", a lockstep pair would wait {100 * t['lockstep_waiting']:.1f}%"
                          if "error" not in t else f"seed {t['seed']}: {t['error'][-300:]}" for t in twins))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
