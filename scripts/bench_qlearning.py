"""Benchmark sharded Q-learning: updates/s per rank at 1 and 2 ranks vs a numpy baseline.

The baseline is a single-process vectorised numpy Q-learning (all agents step
together, one fancy-indexed update per step) on the same gridworld, run in the
same invocation. Strong scaling uses the same grid at 1 and 2 ranks; weak
scaling doubles the grid (rows) and the budget with the ranks. Agents crowd on
the goal's shard as epsilon decays (the "busiest rank" column shows its share of
the updates); ``strong-b`` / ``weak-b`` repeat strong / weak with load balancing
(``algo.rebalance_every``), which recuts the shards so each does an equal share; the ``-u`` rows
repeat base/weak with epsilon fixed at 1, where
random-walk agents stay spread out, to show the engine's own scaling cost. The
``pair`` row runs two independent 1-rank jobs at the same time: the efficiency
this machine allows two busy processes at all, the ceiling for any 2-rank row.

Every kind runs ``--repeats`` times, interleaved, and the fastest repeat is reported: on a
shared machine single runs drift by up to 2x within minutes. ``eff`` divides the fastest
repeats; ``eff med`` is the median over repeats of each repeat's rate over the same repeat's
1-rank rate (the steadier figure when the machine drifts). With ``base-w`` (one rank on the
doubled grid) in ``--kinds``, the weak rows' rate is also divided by that run's: their
parallel efficiency on the very problem they solve.

    python scripts/bench_qlearning.py [--rows 100] [--cols 100] [--budget 20000000] [--repeats 3]
        [--exchange-every 64] [--rebalance-every 20] [--rebalance-threshold 1.1] [--modes sync,async]
        [--kinds base,strong,weak,strong-b,weak-b,base-u,weak-u,pair,base-w] [--no-bind] [--float32] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_common import mpiexec_cmd  # noqa: E402  (scripts/ is on sys.path when run as a script)

BIND = True  # hpcql binds 2-rank runs to cores (run.bind_cores; --no-bind turns it off)
FLOAT32 = False  # algo.float32: 12-byte instead of 16-byte transition records (--float32)


def numpy_baseline(rows: int, cols: int, agents: int, steps: int, gamma: float = 0.99, seed: int = 0) -> float:
    """Vectorised numpy Q-learning (epsilon-greedy, 1/n^0.8 steps) on the same gridworld: updates/s."""
    from hpcql.config import GridworldEnv
    from hpcql.mdp.gridworld import gridworld_shard

    sh = gridworld_shard(GridworldEnv(kind="gridworld", rows=rows, cols=cols, slip=0.1), seed, 0, rows * cols)
    S, A = sh.num_states, sh.num_actions
    k = int(sh.indptr[1] - sh.indptr[0])  # constant successors per row in the gridworld
    nxt = sh.indices.reshape(S * A, k)
    outcome_r = sh.entry_rewards.reshape(S * A, k)  # the reward of the sampled outcome, as hpcql draws it
    cdf = np.cumsum(sh.probs.reshape(S * A, k), axis=1)
    absorbing = (nxt == np.repeat(np.arange(S), A)[:, None]).all(axis=1).reshape(S, A).all(axis=1)
    rng = np.random.default_rng(seed)
    q = np.zeros((S, A))
    n = np.zeros((S, A))
    s = rng.integers(0, S, agents)
    t0 = time.perf_counter()
    for _ in range(steps):
        restart = absorbing[s]
        s = np.where(restart, rng.integers(0, S, agents), s)
        greedy = q[s].argmax(axis=1)
        a = np.where(rng.random(agents) < 0.1, rng.integers(0, A, agents), greedy)
        row = s * A + a
        j = (rng.random(agents)[:, None] >= cdf[row]).sum(axis=1).clip(0, k - 1)
        s2 = nxt[row, j]
        n[s, a] += 1
        target = outcome_r[row, j] + gamma * q[s2].max(axis=1)
        q[s, a] += n[s, a] ** -0.8 * (target - q[s, a])
        s = s2
    return agents * steps / (time.perf_counter() - t0)


EXCHANGE_EVERY = 64  # steps per agent between migrations / ghost refreshes (--exchange-every)


def _launch(ranks: int, rows: int, cols: int, budget: int, mode: str, tmp: Path, uniform: bool = False,
            tag: str = "", exchange_every: int = EXCHANGE_EVERY, rebalance_every: int = 0,
            rebalance_threshold: float = 1.1) -> tuple[subprocess.Popen, Path]:
    """Start one run; ``uniform``: epsilon stays 1 (random walks), so agents stay spread over all shards;
    ``rebalance_every``: load-balance checks (algo.rebalance_every, 0: fixed partition)."""
    out = tmp / f"r{ranks}-{rows}x{cols}-{mode}-{'u' if uniform else 'g'}-b{rebalance_every}{tag}"
    cfg = tmp / f"{out.name}.toml"
    cfg.write_text(f'[run]\nout_dir = "{out}"\noverwrite = true\nprogress = "none"\nplots = false\n'
                   f'bind_cores = "{"auto" if BIND else "off"}"\n'
                   f'[env]\nkind = "gridworld"\nrows = {rows}\ncols = {cols}\nslip = 0.1\n'
                   f'[algo]\nname = "q-learning"\nmode = "{mode}"\nbudget_updates = {budget}\neval_points = 0\n'
                   f'float32 = {"true" if FLOAT32 else "false"}\n'
                   f'exchange_every = {exchange_every}\nrebalance_every = {rebalance_every}\n'
                   f'rebalance_threshold = {rebalance_threshold}\n'
                   + ('epsilon_schedule = "constant"\n' if uniform else ''))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(mpiexec_cmd(ranks) + [sys.executable, "-m", "hpcql", "run", str(cfg)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def _collect(proc: subprocess.Popen, out: Path, ranks: int, rows: int, cols: int, mode: str) -> dict:
    """Wait for a launched run and read its result attributes."""
    log, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"hpcql run failed ({out.name}):\n{log[-2000:]}")
    with h5py.File(out / "result.h5", "r") as f:
        a = f.attrs
        return {"ranks": ranks, "rows": rows, "cols": cols, "mode": mode, "updates": int(a["updates"]),
                "updates_per_rank": [int(x) for x in a["updates_per_rank"]],
                "learn_seconds": float(a["learn_seconds"]), "updates_per_s": float(a["updates_per_second"]),
                "updates_per_s_per_rank": float(a["updates_per_second"]) / ranks,
                "migrated": int(a["migrated"]), "gap_start": float(a["gap_start"]),
                "rebalances": int(a["rebalances"])}


def hpcql_run(ranks: int, rows: int, cols: int, budget: int, mode: str, tmp: Path, uniform: bool = False,
              exchange_every: int = EXCHANGE_EVERY, rebalance_every: int = 0, rebalance_threshold: float = 1.1) -> dict:
    """One run."""
    proc, out = _launch(ranks, rows, cols, budget, mode, tmp, uniform, exchange_every=exchange_every,
                        rebalance_every=rebalance_every, rebalance_threshold=rebalance_threshold)
    return _collect(proc, out, ranks, rows, cols, mode)


def hpcql_pair(rows: int, cols: int, budget: int, mode: str, tmp: Path, uniform: bool = False,
               exchange_every: int = EXCHANGE_EVERY) -> dict:
    """Two independent 1-rank runs at the same time: what this machine allows two busy processes.

    Reported like a 2-rank run (summed updates/s); its efficiency is the ceiling for any
    2-rank run here, since no communication or load imbalance is involved.
    """
    runs = [_launch(1, rows, cols, budget, mode, tmp, uniform, f"-pair{i}", exchange_every) for i in range(2)]
    parts = [_collect(proc, out, 1, rows, cols, mode) for proc, out in runs]
    rate = sum(p["updates_per_s"] for p in parts)
    return {"ranks": 2, "rows": rows, "cols": cols, "mode": mode, "updates": sum(p["updates"] for p in parts),
            "updates_per_rank": [p["updates"] for p in parts], "learn_seconds": max(p["learn_seconds"] for p in parts),
            "updates_per_s": rate, "updates_per_s_per_rank": rate / 2, "migrated": 0,
            "gap_start": max(p["gap_start"] for p in parts), "rebalances": 0}


def base_kind(kind: str) -> str:
    """The 1-rank kind a kind's efficiency is taken against (``-u`` rows against ``base-u``)."""
    return "base-u" if kind.endswith("-u") else "base"  # weak-b / strong-b against base


def same_grid_kind(kind: str) -> str | None:
    """The 1-rank run on the doubled grid (``base-w``) for the weak rows: their parallel efficiency
    on that very problem, apart from how much slower one core runs the bigger grid per update."""
    return "base-w" if kind in ("weak", "weak-b") else None


def paired_efficiencies(all_runs: list[dict], against=base_kind) -> dict[tuple[str, str], list[float]]:
    """Per (mode, kind), each repeat's per-rank rate over the same repeat's 1-rank rate
    (of kind ``against(kind)``, None: no pairing).

    The runs of one repeat are minutes apart at most, so their ratio is far steadier than
    the ratio of two best-of-repeats taken at different times (this VM drifts up to 2x).
    """
    out: dict[tuple[str, str], list[float]] = {}
    for r in all_runs:
        one = next((b for b in all_runs if b["mode"] == r["mode"] and b["kind"] == against(r["kind"])
                    and b["repeat"] == r["repeat"]), None)
        if one is not None:
            out.setdefault((r["mode"], r["kind"]), []).append(r["updates_per_s_per_rank"] / one["updates_per_s_per_rank"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--cols", type=int, default=100)
    ap.add_argument("--budget", type=int, default=20_000_000, help="updates per rank")
    ap.add_argument("--agents", type=int, default=1024)
    ap.add_argument("--baseline-steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is reported")
    ap.add_argument("--exchange-every", type=int, default=EXCHANGE_EVERY,
                    help="algo.exchange_every of every hpcql run (default %(default)s)")
    ap.add_argument("--rebalance-every", type=int, default=20,
                    help="algo.rebalance_every of the -b rows (default %(default)s)")
    ap.add_argument("--rebalance-threshold", type=float, default=1.1,
                    help="algo.rebalance_threshold of the -b rows (default %(default)s)")
    ap.add_argument("--kinds", default="base,strong,weak,strong-b,weak-b,base-u,weak-u,pair",
                    help="comma-separated kinds to run (default all; base / base-u are needed for efficiencies)")
    ap.add_argument("--modes", default="sync,async", help="comma-separated modes (default sync,async)")
    ap.add_argument("--no-bind", action="store_true", help="run.bind_cores = off: ranks left unbound (MPICH mpiexec's default)")
    ap.add_argument("--float32", action="store_true", help="algo.float32 = true: float32 transition probabilities")
    ap.add_argument("--out", default="bench_qlearning.json")
    args = ap.parse_args()
    global BIND, FLOAT32
    BIND = not args.no_bind
    FLOAT32 = args.float32
    results: dict = {"cpu_count": os.cpu_count(), "bind_cores": "auto" if BIND else "off", "float32": FLOAT32, "repeats": args.repeats, "exchange_every": args.exchange_every,
                     "rebalance_every": args.rebalance_every, "rebalance_threshold": args.rebalance_threshold,
                     "runs": [], "all_runs": []}
    results["numpy_baseline_updates_per_s"] = numpy_baseline(args.rows, args.cols, args.agents, args.baseline_steps)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        b, rows, cols = args.budget, args.rows, args.cols
        x = args.exchange_every
        modes, wanted = args.modes.split(","), args.kinds.split(",")
        balance = {"rebalance_every": args.rebalance_every, "rebalance_threshold": args.rebalance_threshold}
        for rep in range(args.repeats):  # every kind once per repeat, interleaved: drifts hit all kinds alike
            for mode in modes:
                kinds = {
                    "base": lambda: hpcql_run(1, rows, cols, b, mode, tmp, exchange_every=x),
                    # 1 rank on the weak rows' doubled grid and budget
                    "base-w": lambda: hpcql_run(1, 2 * rows, cols, 2 * b, mode, tmp, exchange_every=x),
                    "strong": lambda: hpcql_run(2, rows, cols, 2 * b, mode, tmp, exchange_every=x),
                    "weak": lambda: hpcql_run(2, 2 * rows, cols, 2 * b, mode, tmp, exchange_every=x),
                    # the same with load balancing: shard boundaries follow where the updates happen
                    "strong-b": lambda: hpcql_run(2, rows, cols, 2 * b, mode, tmp, exchange_every=x, **balance),
                    "weak-b": lambda: hpcql_run(2, 2 * rows, cols, 2 * b, mode, tmp, exchange_every=x, **balance),
                    # random-walk agents: no crowding near the goal, so this isolates the engine's
                    # own cost of scaling (migration, ghosts, reductions) from load imbalance
                    "base-u": lambda: hpcql_run(1, rows, cols, b, mode, tmp, True, x),
                    "weak-u": lambda: hpcql_run(2, 2 * rows, cols, 2 * b, mode, tmp, True, x),
                    # the machine's own ceiling: two unrelated 1-rank runs at once (no MPI between them)
                    "pair": lambda: hpcql_pair(rows, cols, b, mode, tmp, exchange_every=x),
                }
                for kind in wanted:
                    results["all_runs"].append(kinds[kind]() | {"kind": kind, "repeat": rep})
        # per (mode, kind): the repeat with the highest throughput (timing noise only ever slows a run)
        for mode in modes:
            for kind in wanted:
                same = [r for r in results["all_runs"] if r["mode"] == mode and r["kind"] == kind]
                best = max(same, key=lambda r: r["updates_per_s"])
                results["runs"].append(best | {"all_updates_per_s": [r["updates_per_s"] for r in same]})
    base = results["numpy_baseline_updates_per_s"]
    paired = paired_efficiencies(results["all_runs"])
    print(f"numpy vectorised baseline (1 process, {args.agents} agents): {base / 1e6:.2f} M updates/s")
    print(f"{'mode':>6} {'kind':>7} {'ranks':>5} {'grid':>9} {'M upd/s':>9} {'M upd/s/rank':>13} {'x numpy':>8} "
          f"{'eff':>6} {'eff med':>8} {'migrated':>10} {'busiest rank':>12} {'recuts':>6}")
    for mode in modes:
        for r in (x for x in results["runs"] if x["mode"] == mode):
            one = next((b for b in results["runs"] if b["mode"] == mode and b["kind"] == base_kind(r["kind"])), None)
            r["speedup_vs_numpy_per_rank"] = r["updates_per_s_per_rank"] / base
            r["efficiency"] = r["updates_per_s_per_rank"] / one["updates_per_s_per_rank"] if one else float("nan")
            r["busiest_rank_share"] = max(r["updates_per_rank"]) / max(1, sum(r["updates_per_rank"]))
            r["paired_efficiencies"] = paired.get((mode, r["kind"]), [])
            r["efficiency_median_paired"] = float(np.median(r["paired_efficiencies"])) if r["paired_efficiencies"] \
                else float("nan")
            print(f"{mode:>6} {r['kind']:>7} {r['ranks']:>5} {r['rows']:>4}x{r['cols']:<4} "
                  f"{r['updates_per_s'] / 1e6:9.2f} {r['updates_per_s_per_rank'] / 1e6:13.2f} "
                  f"{r['speedup_vs_numpy_per_rank']:8.1f} {r['efficiency']:6.2f} {r['efficiency_median_paired']:8.2f} "
                  f"{r['migrated']:>10} "
                  f"{r['busiest_rank_share']:12.0%} {r['rebalances']:6d}")
    same_grid = paired_efficiencies(results["all_runs"], same_grid_kind)
    results["same_grid_efficiency_median"] = {f"{m}/{k}": float(np.median(v)) for (m, k), v in same_grid.items()}
    for key, med in results["same_grid_efficiency_median"].items():
        print(f"{key}: per-rank rate over 1 rank on the same {2 * args.rows}x{args.cols} grid, median {med:.2f}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
