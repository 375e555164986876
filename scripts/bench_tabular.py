#!/usr/bin/env python
"""Tabular benchmark (issues 2 and 3): per-sweep throughput and time-to-epsilon vs peers.

One run, the same MDPs for every solver, all built in-process from the
``hpcql.mdp`` generators (gridworld_shard / random_mdp_shard, seed 0):

* slip gridworld, ``side x side`` states, 4 actions, slip 0.1, goal in the corner;
* random sparse MDP, S states, 4 actions, 8 uniform successors per (s, a).

Part A (issue 2), per-sweep throughput: machine streaming bandwidth (numpy
triad), a scipy.sparse CSR Bellman sweep, hpcql's numba ``bellman_sweep``
(single process) and the per-sweep time of ``mpiexec -n k hpcql run`` (VI sync,
fixed number of sweeps): ms/sweep, transitions/s, ratio to scipy (whole and per
rank), fraction of the bandwidth roofline under a stated byte model, per rank: a row
where k processes stream at once is held against the triad bandwidth of k
processes running at once, divided by k (the share one core gets).

Part B (issue 3), time to an eps-optimal greedy policy (eps = 1e-6 by default)
for gamma 0.99 and 0.999: scipy.sparse VI (sup-norm rule, as hpcql), pymdptoolbox
ValueIteration / PolicyIterationModified (span rule), mdpsolver vi/mpi x
standard/gs (span rule for standard, sup-norm for gs; 2 OpenMP threads), and
hpcql VI sync / VI async / PI optimistic / PI inexact at 1 and 2 ranks. Every
solver runs in its own subprocess under a time cap (``--cap``, counted from the
end of its model setup). Every answer is checked here, with scipy, on the same
model: ``max|V - V_ref|`` and the certified loss of its greedy policy,
``gamma * span(TV - V) / (1 - gamma)`` (Williams & Baird bound, shift-invariant),
which must be <= eps for a correct answer.

    python scripts/bench_tabular.py --quick        # small sizes, ~2 min
    python scripts/bench_tabular.py                # 10^6-state MDPs
    python scripts/bench_tabular.py --cap 120 --json bench-results/bench_tabular.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, fmt_num, format_table, machine_info, mpiexec_cmd, run_capped, write_json  # noqa: E402

BIN = Path(sys.executable).parent
PART_A_PAIRS = 3  # pairs of hpcql runs (n and 3n sweeps) per rank count in Part A; the median is reported
CACHED_GATHER_STATES = 16384  # time_kernels' diagnostic: gathers folded into 128 KB of values
PAIR_PROCS = 2  # processes sweeping private copies at once in the concurrent kernel rows
BLOCK = 3  # consecutive sweeps per solver and turn in the in-process timing (the first untimed)
START_MARKER = "BENCH_SOLVE_START"
HPCQL_MARKER = "MDP:"  # hpcql prints its model line right after building the shard, before solving

PEERS = [
    "scipy VI",
    "pymdptoolbox VI",
    "pymdptoolbox PIM",
    "mdpsolver vi/standard",
    "mdpsolver vi/gs",
    "mdpsolver mpi/standard",
    "mdpsolver mpi/gs",
]
HPCQL_ALGOS = {
    "VI sync": {"name": "value-iteration", "mode": "sync"},
    "VI sync span": {"name": "value-iteration", "mode": "sync", "stopping": "span"},
    "VI async": {"name": "value-iteration", "mode": "async"},
    "PI optimistic": {"name": "policy-iteration", "variant": "optimistic"},
    "PI inexact": {"name": "policy-iteration", "variant": "inexact"},
}


# ============================================================================ models
def build_mdp(kind: str, size: int) -> dict[str, Any]:
    """The model as state-major CSR arrays (row s*A + a), with the hpcql [env] section that makes it."""
    if kind == "gridworld":
        from hpcql.config import GridworldEnv
        from hpcql.mdp.gridworld import gridworld_shard

        side = int(round(size ** 0.5))
        env_cfg = {"kind": "gridworld", "rows": side, "cols": side, "slip": 0.1, "obstacle_density": 0.0}
        sh = gridworld_shard(GridworldEnv(**env_cfg), 0, 0, side * side)
        desc = f"slip gridworld {side}x{side} ({side * side:,} states), 4 actions, slip 0.1"
    elif kind == "random":
        from hpcql.mdp.random_mdp import random_mdp_shard

        env_cfg = {"kind": "random", "states": size, "actions": 4, "successors": 8, "local_fraction": 0.0}
        sh = random_mdp_shard(size, 4, 8, 0, 0, size, None, 0.0)
        desc = f"random sparse MDP {size:,} states, 4 actions, 8 successors"
    else:
        raise ValueError(kind)
    return {
        "kind": kind, "desc": desc, "env": env_cfg,
        "S": sh.num_states, "A": sh.num_actions, "nnz": sh.nnz,
        "indptr": sh.indptr.astype(np.int64), "indices": sh.indices.astype(np.int32),
        "probs": sh.probs.astype(np.float64), "rewards": np.ascontiguousarray(sh.rewards, dtype=np.float64),
    }


def to_csr(m: dict[str, Any]):
    import scipy.sparse as sp

    return sp.csr_matrix((m["probs"], m["indices"], m["indptr"]), shape=(m["S"] * m["A"], m["S"]))


def save_model(m: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in ("indptr", "indices", "probs", "rewards"):
        np.save(folder / f"{k}.npy", m[k])
    (folder / "meta.json").write_text(json.dumps({k: m[k] for k in ("kind", "desc", "S", "A", "nnz")}))


def load_model(folder: Path) -> dict[str, Any]:
    m = json.loads((folder / "meta.json").read_text())
    for k in ("indptr", "indices", "probs", "rewards"):
        m[k] = np.load(folder / f"{k}.npy")
    return m


def bellman_check(P, R: np.ndarray, V: np.ndarray, gamma: float) -> tuple[float, float]:
    """(||TV - V||_inf, span(TV - V)) with scipy."""
    S, A = R.shape
    q = (P @ V).reshape(S, A)
    q *= gamma
    q += R
    d = q.max(axis=1) - V
    return float(np.abs(d).max()), float(d.max() - d.min())


# ============================================================================ Part A
def _triad_seconds(n: int, reps: int, barrier: Any = None) -> float:
    """Best time of the numpy triad a = b + s*c as two in-place passes (c*s -> a; a + b -> a);
    with a ``barrier``, every pass starts together with the other processes'."""
    b = np.random.default_rng(0).random(n)
    c = np.random.default_rng(1).random(n)
    a = np.empty(n)
    best = np.inf
    for _ in range(reps):
        if barrier is not None:
            barrier.wait()
        t = time.perf_counter()
        np.multiply(c, 3.0, out=a)
        np.add(a, b, out=a)
        best = min(best, time.perf_counter() - t)
    return best


def triad_bandwidth(n: int, reps: int, procs: int = 1) -> dict[str, float]:
    """Streaming bandwidth of ``procs`` processes running the triad at once (40 bytes/element
    moved each), summed over the processes; ``procs = 1``: one core's."""
    if procs == 1:
        best = _triad_seconds(n, reps)
    else:
        best = max(run_concurrently(_triad_worker, (n, reps), procs))
    return {"elements": n, "bytes_per_element": 40, "procs": procs, "seconds": best,
            "gbs": procs * 40 * n / best / 1e9}


def _triad_worker(n: int, reps: int, barrier: Any, results: Any, slot: int) -> None:
    """One of the concurrent triad processes."""
    results[slot] = _triad_seconds(n, reps, barrier)


def hpcql_sweep(m: dict[str, Any], hints: bool = True):
    """The sweep kernel an hpcql run uses on this model (fixed-width rows when they are uniform,
    prefetch hints when its gathers are scattered); ``hints=False``: the same without prefetch hints."""
    from hpcql.tabular.kernels import kernels_for, kernels_for_rows

    kernels = kernels_for_rows(m["indptr"], m["indices"], m["A"])
    return (kernels if hints else kernels_for(kernels.width)).bellman_sweep


def uses_prefetch(m: dict[str, Any]) -> bool:
    """Whether hpcql's kernel for this model issues prefetch hints."""
    from hpcql.tabular.kernels import scattered_gathers

    return scattered_gathers(m["indptr"], m["indices"], m["A"])


def tiled_sweep(m: dict[str, Any], probs: np.ndarray):
    """hpcql's tiled Jacobi sweep (what sync VI runs with ``algo.sweep_layout = "tiles"``) on this
    model, with the row kernels' signature (the tiles are built here, once)."""
    from hpcql.tabular.tiles import build_tiles, tiled_sweep_range

    t = build_tiles(m["indptr"], m["indices"].astype(np.int32), probs, np.zeros(0, dtype=np.int64), 0, m["S"], m["A"])

    def sweep(indptr, cols, p, R, V, v_out, gamma, pol):  # noqa: ARG001 (the tiles hold the entries)
        return tiled_sweep_range(*t.sweep_args(), R, V, v_out, gamma, pol)
    return sweep


def time_kernels(m: dict[str, Any], gamma: float, reps: int, float32: bool = False) -> dict[str, Any]:
    """Median steady-state times of a scipy CSR sweep, hpcql's sweep and its general-CSR variant
    (and, with ``float32``, hpcql's sweep on float32 probabilities).

    ``numba_cached_gathers`` is a diagnostic, not a solver: hpcql's sweep with every column folded
    into the first ``CACHED_GATHER_STATES`` states, so the gathers hit a 128 KB block that stays in
    the L2 cache while the streamed bytes (probabilities, columns, rewards) are the same. Its gap to
    ``numba`` is what the value gathers' cache misses cost.

    The solvers take turns, ``BLOCK`` consecutive sweeps each per turn (the first untimed).
    """
    from hpcql.tabular.kernels import CSR

    P = to_csr(m)
    S, A = m["S"], m["A"]
    R = m["rewards"]
    V = np.random.default_rng(2).random(S)
    v_out = np.empty(S)
    pol = np.zeros(S, dtype=np.int64)

    def scipy_sweep() -> np.ndarray:
        q = (P @ V).reshape(S, A)
        q *= gamma
        q += R
        return q.max(axis=1)

    ref = scipy_sweep()
    probs32 = m["probs"].astype(np.float32)
    cols = m["indices"]
    kernels = {"numba": (hpcql_sweep(m), m["probs"], cols), "numba_csr": (CSR.bellman_sweep, m["probs"], cols)}
    if uses_prefetch(m):
        kernels["numba_nohints"] = (hpcql_sweep(m, hints=False), m["probs"], cols)
        kernels["numba_tiled"] = (tiled_sweep(m, m["probs"]), m["probs"], cols)
    if float32:  # algo.float32: the same kernel on probabilities rounded to float32
        kernels["numba_f32"] = (hpcql_sweep(m), probs32, cols)
    for kernel, probs, _ in kernels.values():
        kernel(m["indptr"], cols, probs, R, V, v_out, gamma, pol)  # JIT / cache load
        tol = 1e-12 if probs.dtype == np.float64 else 1e-6  # float32 rounding moves P by ~6e-8 relative
        assert np.allclose(ref, v_out, rtol=tol, atol=tol), "numba and scipy sweeps disagree"
    if S > 4 * CACHED_GATHER_STATES:  # a diagnostic (other answers): the gathers kept in cache
        kernels["numba_cached_gathers"] = (hpcql_sweep(m), m["probs"], cols % cols.dtype.type(CACHED_GATHER_STATES))
    sweeps: dict[str, Callable[[], Any]] = {"scipy": scipy_sweep}
    for name, (kernel, probs, c) in kernels.items():
        sweeps[name] = partial(kernel, m["indptr"], c, probs, R, V, v_out, gamma, pol)
    times: dict[str, list[float]] = {k: [] for k in sweeps}
    for _ in range(reps):
        # each solver in turn, BLOCK sweeps back to back as in a solve (its own data warm in the
        # caches, not the other solver's temporaries); the first sweep of a block is not timed
        for name, sweep in sweeps.items():
            for i in range(BLOCK):
                t = time.perf_counter()
                sweep()
                if i:
                    times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()} | {f"{k}_all": v for k, v in times.items()}


# ============================================================================ hpcql subprocess runs
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_config(path: Path, out_dir: Path, env: dict[str, Any], algo: dict[str, Any]) -> Path:
    sections = {
        "run": {"name": "bench-tabular", "out_dir": str(out_dir), "seed": 0, "overwrite": True,
                "progress": "log", "status_every_seconds": 60.0, "plots": False},
        "env": env,
        "algo": algo,
        "checkpoint": {"enabled": False},
    }
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items()) + "\n"
                   for s, kv in sections.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    return env


def run_hpcql(tmp: Path, tag: str, ranks: int, env_cfg: dict[str, Any], algo: dict[str, Any], cap: float,
              setup_limit: float) -> dict[str, Any]:
    """``mpiexec -n ranks hpcql run cfg``; returns attrs, phases, V (or the failure)."""
    import h5py

    out_dir = tmp / "runs" / tag
    cfg = write_config(tmp / "cfg" / f"{tag}.toml", out_dir, env_cfg, algo)
    cmd = mpiexec_cmd(ranks) + [str(BIN / "hpcql"), "run", str(cfg)]
    res = run_capped(cmd, cap, tmp / "logs" / f"{tag}.log", start_marker=HPCQL_MARKER, setup_limit=setup_limit,
                     env=subprocess_env(), cwd=REPO)
    rec: dict[str, Any] = {"status": res.status, "cmd": " ".join(cmd), "elapsed": res.elapsed,
                           "solve_elapsed": res.solve_elapsed}
    path = out_dir / "result.h5"
    if res.status != "ok" or not path.exists():
        if res.status == "ok":
            rec["status"] = "failed"
        rec["log_tail"] = res.output[-1500:]
        return rec
    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                 if k not in ("config_json",)}
        rec["V"] = f["V"][...]
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    rec["phases"] = json.loads(attrs.pop("phase_seconds_json"))
    rec["attrs"] = attrs
    io = rec["phases"].get("io", {}).get("max", 0.0)
    rec["wall"] = float(attrs["wall_seconds"])
    rec["setup"] = io
    rec["solve"] = rec["wall"] - io
    shutil.rmtree(out_dir, ignore_errors=True)
    return rec


# ============================================================================ peer workers (subprocess side)
class _CountingOp:
    """A sparse matrix whose ``dot`` counts its calls (pymdptoolbox's evaluation sweeps)."""

    def __init__(self, mat) -> None:
        self.mat = mat
        self.calls = 0

    def dot(self, v):
        self.calls += 1
        return self.mat @ v


def _patch_mdptoolbox(counter: list) -> None:
    """Keep pymdptoolbox sparse at 10^6 states.

    * ``util.check`` validates P by building dense (S, S) arrays: replaced by a no-op
      (the model is validated by hpcql's generators and by our own checks).
    * ``ValueIteration._boundIter`` computes an iteration bound column by column of
      every P[a] (S sparse column slices): replaced by an effectively unlimited bound;
      the stopping rule itself (span < eps (1-g)/g) is untouched.
    * ``PolicyIteration._computePpolicyPRpolicy`` allocates a dense (S, S) P^pi
      (8 TB at 10^6 states): replaced by the same rows gathered sparsely.
    """
    import mdptoolbox.mdp as mdp
    import mdptoolbox.util as util
    import scipy.sparse as sp

    util.check = lambda P, R: None

    def bound_iter(self, epsilon):
        self.max_iter = 10 ** 9

    def ppolicy(self):
        S = self.S
        rows = None
        Rpolicy = np.zeros(S)
        for a in range(self.A):
            mask = self.policy == a
            if not mask.any():
                continue
            part = sp.diags(mask.astype(np.float64)) @ self.P[a]
            rows = part if rows is None else rows + part
            Rpolicy[mask] = self.R[a][mask]
        op = _CountingOp(rows.tocsr())
        counter.append(op)
        return op, Rpolicy

    mdp.ValueIteration._boundIter = bound_iter
    mdp.PolicyIteration._computePpolicyPRpolicy = ppolicy


class _CaptureFd1:
    """Capture what C/C++ code writes to file descriptor 1."""

    def __enter__(self):
        sys.stdout.flush()
        self.tmp = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(1)
        os.dup2(self.tmp.fileno(), 1)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        self.tmp.seek(0)
        self.text = self.tmp.read().decode(errors="replace")
        self.tmp.close()
        return False


def worker(name: str, model_dir: Path, gamma: float, eps: float, result: Path) -> None:
    """Solve one peer in this process; write V and counters to ``result`` (.npz + .json)."""
    t_setup = time.perf_counter()
    m = load_model(model_dir)
    S, A, nnz = m["S"], m["A"], m["nnz"]
    R = m["rewards"]
    meta: dict[str, Any] = {"name": name, "outer": None, "inner": None, "note": ""}
    solve = None

    if name == "scipy VI":
        P = to_csr(m)
        thr = eps * (1 - gamma) / (2 * gamma)

        def solve():
            V = np.zeros(S)
            it = 0
            while True:
                q = (P @ V).reshape(S, A)
                q *= gamma
                q += R
                Vn = q.max(axis=1)
                diff = float(np.abs(Vn - V).max())
                V = Vn
                it += 1
                if diff < thr:
                    break
            meta["outer"] = it
            meta["note"] = "sup-norm rule < eps(1-g)/(2g), as hpcql"
            return V

    elif name.startswith("pymdptoolbox"):
        import mdptoolbox.mdp as mdp

        counter: list = []
        _patch_mdptoolbox(counter)
        P = to_csr(m)
        Ps = [P[a::A].tocsr() for a in range(A)]
        del P
        if name.endswith("PIM"):
            solver = mdp.PolicyIterationModified(Ps, R, gamma, epsilon=eps)
        else:
            solver = mdp.ValueIteration(Ps, R, gamma, epsilon=eps)

        def solve():
            solver.run()
            meta["outer"] = int(solver.iter)
            if counter:
                meta["inner"] = int(sum(op.calls for op in counter))
            meta["note"] = "span rule < eps(1-g)/g; check/_boundIter/dense P^pi bypassed (sparse)"
            return np.asarray(solver.V, dtype=np.float64)

    elif name.startswith("mdpsolver"):
        import mdpsolver

        algorithm, update = name.split()[1].split("/")
        k = int(m["indptr"][1] - m["indptr"][0])
        if not np.all(np.diff(m["indptr"]) == k):
            raise SystemExit("mdpsolver input builder assumes a constant number of successors per row")
        mdl = mdpsolver.model()
        rewards = R.tolist()
        probs = m["probs"].reshape(S, A, k).tolist()
        cols = m["indices"].reshape(S, A, k).tolist()
        mdl.mdp(discount=gamma, rewards=rewards, tranMatProbs=probs, tranMatColumns=cols)
        del rewards, probs, cols

        def solve():
            with _CaptureFd1() as cap:
                mdl.solve(algorithm=algorithm, tolerance=eps, update=update, parallel=(update == "standard"),
                          verbose=True)
            found = re.search(r"Solution found in (\d+) iterations and ([0-9.eE+-]+) milliseconds", cap.text)
            meta["outer"] = int(found.group(1)) if found else None
            meta["runtime_ms"] = float(mdl.getRuntime())
            if algorithm == "mpi":
                par = [int(x) for x in re.findall(r"parIter (\d+)", cap.text)]
                meta["inner"] = sum(par) if par else None
            meta["note"] = ("span rule" if update == "standard" else "sup-norm rule") + \
                f"; threads {os.environ.get('OMP_NUM_THREADS', '?') if update == 'standard' else 1}"
            meta["log_tail"] = cap.text[-600:]
            return np.asarray(mdl.getValueVector(), dtype=np.float64)

    else:
        raise SystemExit(f"unknown peer {name!r}")

    meta["setup"] = time.perf_counter() - t_setup
    print(START_MARKER, flush=True)
    t = time.perf_counter()
    V = solve()
    meta["solve"] = time.perf_counter() - t
    np.save(result.with_suffix(".npy"), V)
    result.with_suffix(".json").write_text(json.dumps(meta))


def run_peer(tmp: Path, tag: str, name: str, model_dir: Path, gamma: float, eps: float, cap: float,
             setup_limit: float, threads: int) -> dict[str, Any]:
    result = tmp / "peer" / tag
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", str(model_dir),
           "--gamma", repr(gamma), "--eps", repr(eps), "--result", str(result)]
    env = subprocess_env()
    if name.startswith("mdpsolver"):
        env["OMP_NUM_THREADS"] = str(threads)
    res = run_capped(cmd, cap, tmp / "logs" / f"{tag}.log", start_marker=START_MARKER, setup_limit=setup_limit,
                     env=env, cwd=REPO)
    rec: dict[str, Any] = {"status": res.status, "elapsed": res.elapsed, "solve_elapsed": res.solve_elapsed}
    js = result.with_suffix(".json")
    if res.status == "ok" and js.exists():
        meta = json.loads(js.read_text())
        rec.update(meta)
        rec["V"] = np.load(result.with_suffix(".npy"))
        rec["wall"] = meta["setup"] + meta["solve"]
        result.with_suffix(".npy").unlink()
    else:
        if res.status == "ok":
            rec["status"] = "failed"
        rec["log_tail"] = res.output[-1500:]
    return rec


def _pair_worker(m: dict[str, Any], gamma: float, reps: int, hints: bool, float32: bool, barrier: Any,
                 results: Any, slot: int) -> None:
    """One of the concurrent kernel processes: its own copy of the model, sweeps after the barrier."""
    bellman_sweep = hpcql_sweep(m, hints)
    indptr, cols, probs, R = (np.array(m[k], copy=True) for k in ("indptr", "indices", "probs", "rewards"))
    if float32:
        probs = probs.astype(np.float32)
    V = np.random.default_rng(2).random(m["S"])
    v_out = np.empty(m["S"])
    pol = np.zeros(m["S"], dtype=np.int64)
    bellman_sweep(indptr, cols, probs, R, V, v_out, gamma, pol)  # JIT / cache load, first touch
    times = []
    for _ in range(reps):
        barrier.wait()  # every sweep starts together, so the processes really overlap
        t = time.perf_counter()
        bellman_sweep(indptr, cols, probs, R, V, v_out, gamma, pol)
        times.append(time.perf_counter() - t)
    results[slot] = float(np.median(times))


def run_concurrently(target: Any, args: tuple, procs: int) -> list[float]:
    """Run ``target(*args, barrier, results, slot)`` in ``procs`` forked processes at once;
    each stores one float in ``results[slot]``; returns them."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Array("d", procs)
    workers = [ctx.Process(target=target, args=(*args, barrier, results, i)) for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if any(w.exitcode != 0 for w in workers):
        raise RuntimeError(f"a concurrent {target.__name__} process failed")
    return list(results[:])


def concurrent_kernel_time(m: dict[str, Any], gamma: float, reps: int, procs: int, hints: bool = True,
                           float32: bool = False) -> float:
    """Median per-sweep time of the numba kernel when ``procs`` processes sweep private copies at once.

    The ratio to the one-process time is what the machine itself (shared memory bandwidth,
    caches, cores) allows two ranks: an upper bound on 1 -> 2 strong-scaling efficiency for
    this kernel, independent of any communication. ``hints=False``: without prefetch hints;
    ``float32``: on float32 probabilities.
    """
    return max(run_concurrently(_pair_worker, (m, gamma, reps, hints, float32), procs))


# ============================================================================ driver
def part_a_runs(m: dict[str, Any], ranks: int, args, tmp: Path, out: dict[str, Any],
                float32: bool = False) -> list[tuple]:
    """Per-sweep phases of ``mpiexec -n ranks hpcql run``: (label, sec per sweep, ranks, ranks busy) rows.

    ``PART_A_PAIRS`` pairs of runs, n and 3n sweeps each; a pair's difference cancels start-up
    (numba cache load, first touch, setup), and the median over pairs damps this machine's noise.
    ``float32``: the runs set ``algo.float32`` (the labels say so).
    """
    n1 = args.part_a_sweeps
    tag = f"x{ranks}" + (" float32" if float32 else "")
    marginals: dict[str, list[float]] = {"compute": [], "exchange": [], "solve": []}
    its: list[int] = []
    for pair in range(PART_A_PAIRS):
        runs = []
        for n in (n1, 3 * n1):
            algo = {"name": "value-iteration", "mode": "sync", "gamma": 0.99, "tol": 1e-300, "max_iterations": n,
                    "float32": float32}
            runs.append(run_hpcql(tmp, f"A-{m['kind']}-r{ranks}-n{n}-p{pair}-{'f32' if float32 else 'f64'}", ranks,
                                  m["env"], algo, 600.0,
                                  args.setup_limit))  # fixed sweep count: no Part B cap
        bad = [r for r in runs if r["status"] != "ok"]
        if bad:
            out.setdefault("part_a_failures", []).append({k: v for k, v in bad[0].items() if k != "V"})
            return [(f"hpcql run {tag} ({bad[0]['status']})", None, ranks, ranks)]
        its = [int(r["attrs"]["iterations"]) for r in runs]
        if its[1] == its[0]:
            return [(f"hpcql run {tag} (converged early)", None, ranks, ranks)]
        dn = its[1] - its[0]
        for phase in ("compute", "exchange"):
            t = [r["phases"].get(phase, {}).get("max", 0.0) for r in runs]
            marginals[phase].append((t[1] - t[0]) / dn)
        marginals["solve"].append((runs[1]["solve"] - runs[0]["solve"]) / dn)
        first = runs[0]["solve"] / its[0]
    med = {k: float(np.median(v)) for k, v in marginals.items()}
    return [(f"hpcql run {tag}: compute phase (max over ranks)", med["compute"], ranks, ranks),
            (f"hpcql run {tag}: exchange phase (max over ranks)", med["exchange"], ranks, ranks),
            (f"hpcql run {tag}: solve time (wall - setup)", med["solve"], ranks, ranks),
            (f"hpcql run {tag}: first {its[0]} sweeps, solve time per sweep (last pair)", first, ranks, ranks)]


def part_a(models: list[dict[str, Any]], args, tmp: Path, out: dict[str, Any]) -> str:
    from hpcql.tabular.kernels import row_width

    busy_counts = sorted({1, PAIR_PROCS, *args.ranks})
    bws = {c: triad_bandwidth(args.triad_elements, 5, c) for c in busy_counts}
    bw = bws[1]
    out["bandwidth"] = bw
    out["bandwidth_by_procs"] = {str(c): b for c, b in bws.items()}
    lines = [f"Streaming bandwidth (numpy triad a = b + s*c, 2 in-place passes, 40 B/element counted, "
             f"{bw['elements']:,} elements each, best of 5): "
             + ", ".join(f"{b['gbs']:.2f} GB/s with {c} process{'es' if c > 1 else ''} at once"
                         for c, b in bws.items())]
    lines.append("Byte model per transition (int32 indices): prob 8 (4 in the float32 rows) + index 4 + V gather "
                 "8 (upper bound: no reuse; a random gather really costs a 64 B line, a gridworld gather ~0) + "
                 "per (s,a) row (reward 8, + indptr 8 unless every row has the same k: hpcql's fixed-width kernels "
                 "then never read indptr)/k. Roofline time = bytes x (a process's share of nnz) / (triad GB/s with "
                 "as many processes busy, per process); 'roofline' = that / measured: per rank, against the "
                 "bandwidth one core gets while the other ranks' cores stream too.")
    rows = []
    out["part_a"] = []
    for m in models:
        k = m["nnz"] / (m["S"] * m["A"])
        bpt = 8 + 4 + 8 + (8 if row_width(m["indptr"]) else 16) / k
        roof = bpt * m["nnz"] / (bw["gbs"] * 1e9)
        kt = time_kernels(m, 0.99, args.sweep_reps, float32=args.float32)
        pair = concurrent_kernel_time(m, 0.99, args.sweep_reps, PAIR_PROCS)
        at_once = f"{PAIR_PROCS} procs at once (each)"
        # (label, sec per sweep, ranks sharing the model, processes streaming at the same time)
        entries = [("scipy.sparse CSR (P@V, reshape, max)", kt["scipy"], 1, 1),
                   ("hpcql bellman_sweep (numba, 1 proc)", kt["numba"], 1, 1),
                   ("hpcql bellman_sweep, general CSR rows (1 proc)", kt["numba_csr"], 1, 1),
                   (f"hpcql bellman_sweep, {at_once}", pair, 1, PAIR_PROCS)]
        if "numba_nohints" in kt:  # the prefetch hints' effect, alone and with two processes sweeping
            entries += [("hpcql bellman_sweep without prefetch hints (1 proc)", kt["numba_nohints"], 1, 1),
                        (f"hpcql bellman_sweep without prefetch hints, {at_once}",
                         concurrent_kernel_time(m, 0.99, args.sweep_reps, PAIR_PROCS, hints=False), 1, PAIR_PROCS)]
        if "numba_tiled" in kt:
            entries += [("hpcql tiled sweep (column blocks: algo.sweep_layout = tiles, 1 proc)", kt["numba_tiled"],
                         1, 1)]
        if "numba_cached_gathers" in kt:
            entries += [(f"diagnostic: hpcql bellman_sweep, gathers folded into {CACHED_GATHER_STATES:,} states "
                         "(L2-resident; same bytes streamed)", kt["numba_cached_gathers"], 1, 1)]
        if args.float32:
            entries += [("hpcql bellman_sweep, float32 probabilities (1 proc)", kt["numba_f32"], 1, 1),
                        (f"hpcql bellman_sweep, float32 probabilities, {at_once}",
                         concurrent_kernel_time(m, 0.99, args.sweep_reps, PAIR_PROCS, float32=True), 1, PAIR_PROCS)]
        for ranks in args.ranks:
            entries += part_a_runs(m, ranks, args, tmp, out)
            if args.float32:
                entries += part_a_runs(m, ranks, args, tmp, out, float32=True)
        for label, t, ranks, busy in entries:
            row_bpt = bpt - 4 if "float32" in label else bpt
            row_roof = row_bpt * m["nnz"] / ranks / (bws[busy]["gbs"] / busy * 1e9)
            rec = {"mdp": m["kind"], "what": label, "ranks": ranks, "sec_per_sweep": t,
                   "bytes_per_transition": row_bpt, "roofline_sec_per_sweep": row_roof, "busy_processes": busy}
            if t is not None and "exchange phase" in label:  # a part of a sweep: no throughput figures
                rows.append([m["kind"], label, f"{t * 1e3:.1f}", "-", "-", "-", "-"])
            elif t is None:
                rows.append([m["kind"], label, "-", "-", "-", "-", "-"])
            else:
                per_rank = kt["scipy"] / (t * ranks)  # one rank's transitions/s against scipy's
                rec.update(transitions_per_s=m["nnz"] / t, ratio_to_scipy=kt["scipy"] / t,
                           per_rank_ratio_to_scipy=per_rank, roofline_fraction=row_roof / t)
                rows.append([m["kind"], label, f"{t * 1e3:.1f}", f"{m['nnz'] / t / 1e6:.0f}",
                             f"{kt['scipy'] / t:.2f}x", f"{per_rank:.2f}x", f"{row_roof / t:.0%}"])
            out["part_a"].append(rec)
        lines.append(f"{m['kind']}: {m['desc']}: {m['nnz']:,} transitions, {bpt:.1f} B/transition, "
                     f"roofline {roof * 1e3:.1f} ms/sweep (1 core)")
        ceiling = kt["numba"] / pair
        out.setdefault("two_process_ceiling", {})[m["kind"]] = {"one_proc": kt["numba"], "each_of_two": pair,
                                                                "strong_scaling_ceiling": ceiling}
        if "numba_cached_gathers" in kt:
            miss = kt["numba"] - kt["numba_cached_gathers"]
            out.setdefault("gather_misses", {})[m["kind"]] = {"sweep": kt["numba"],
                                                             "gathers_in_cache": kt["numba_cached_gathers"],
                                                             "miss_share": miss / kt["numba"]}
            lines.append(f"{m['kind']}: with the gathers kept in cache the same sweep takes "
                         f"{kt['numba_cached_gathers'] * 1e3:.1f} ms: {miss / kt['numba']:.0%} of the sweep "
                         f"({miss * 1e3:.1f} ms) waits on the value gathers' cache misses, which the streamed-bytes "
                         "roofline does not count")
        lines.append(f"{m['kind']}: two processes sweeping private copies at once take {pair * 1e3:.1f} ms/sweep each "
                     f"vs {kt['numba'] * 1e3:.1f} ms alone: this machine caps 1 -> 2 rank strong-scaling efficiency "
                     f"of the kernel at about {ceiling:.0%}")
    table = format_table(["MDP", "sweep", "ms/sweep", "M trans/s", "vs scipy", "per rank", "roofline/rank"], rows,
                         title="Part A: per-sweep throughput (in-process kernels: median of %d turns x %d back-to-back "
                         "sweeps per solver; hpcql run: median over %d pairs of the marginal time per sweep between "
                         "runs of %d and %d sweeps, VI sync)"
                         % (args.sweep_reps, BLOCK - 1, PART_A_PAIRS, args.part_a_sweeps, 3 * args.part_a_sweeps))
    return "\n".join(lines) + "\n\n" + table


def solver_list(args) -> list[tuple[str, str, int]]:
    """(label, family, ranks) of every solver, filtered by --solvers."""
    items = [(p, "peer", 1) for p in PEERS]
    for ranks in args.ranks:
        items += [(f"hpcql {a} x{ranks}", a, ranks) for a in HPCQL_ALGOS]
    if args.solvers:
        keys = [s.strip().lower() for s in args.solvers.split(",")]
        items = [it for it in items if any(k in it[0].lower() for k in keys)]
    return items


def part_b(models: list[dict[str, Any]], args, tmp: Path, out: dict[str, Any]) -> str:
    import scipy.sparse  # noqa: F401

    texts = []
    out["part_b"] = []
    for m in models:
        model_dir = tmp / "model" / m["kind"]
        save_model(m, model_dir)
        P = to_csr(m)
        capped: set[str] = set()
        for gamma in sorted(args.gammas):
            recs: list[dict[str, Any]] = []
            for label, family, ranks in solver_list(args):
                tag = re.sub(r"[^A-Za-z0-9]+", "-", f"B-{m['kind']}-{gamma}-{label}")
                t0 = time.perf_counter()
                if label in capped and not args.rerun_capped:
                    rec = {"status": "skipped", "why": "exceeded the cap at a smaller gamma"}
                elif family == "peer":
                    rec = run_peer(tmp, tag, label, model_dir, gamma, args.eps, args.cap, args.setup_limit,
                                   args.threads)
                else:
                    algo = dict(HPCQL_ALGOS[family], gamma=gamma, tol=args.eps)
                    rec = run_hpcql(tmp, tag, ranks, m["env"], algo, args.cap, args.setup_limit)
                    if rec["status"] == "ok":
                        a = rec["attrs"]
                        if family.startswith("PI"):
                            rec["outer"] = int(a["iterations"])
                            rec["inner"] = int(a.get("inner_iterations", 0))
                        else:
                            rec["outer"] = float(a.get("sweeps", a["iterations"]))
                        rec["converged"] = bool(a.get("converged", True))
                rec.update(label=label, family=family, ranks=ranks, gamma=gamma, mdp=m["kind"],
                           bench_seconds=time.perf_counter() - t0)
                if rec["status"] in ("cap", "setup-timeout"):
                    capped.add(label)
                if "V" in rec:
                    sup, span = bellman_check(P, m["rewards"], rec["V"], gamma)
                    rec["bellman_sup"] = sup
                    rec["greedy_loss_bound"] = gamma * span / (1 - gamma)
                    rec["v_error_bound"] = sup / (1 - gamma)
                    outer, inner = rec.get("outer"), rec.get("inner") or 0
                    if outer is not None:
                        rec["work_transitions"] = outer * m["nnz"] + inner * m["nnz"] / m["A"]
                        rec["transitions_per_s"] = rec["work_transitions"] / max(rec["solve"], 1e-12)
                print(f"  [{m['kind']} g={gamma}] {label}: {rec['status']}"
                      + (f", solve {rec['solve']:.2f} s" if "solve" in rec else "")
                      + (f", loss bound {rec['greedy_loss_bound']:.2e}" if "greedy_loss_bound" in rec else "")
                      + f" ({rec['bench_seconds']:.0f} s)", flush=True)
                recs.append(rec)
            texts.append(table_b(m, gamma, recs, args))
            for r in recs:
                r.pop("V", None)
            out["part_b"].extend(recs)
        del P
    return "\n\n".join(texts)


def table_b(m: dict[str, Any], gamma: float, recs: list[dict[str, Any]], args) -> str:
    done = [r for r in recs if "V" in r]
    ref = min(done, key=lambda r: r["v_error_bound"]) if done else None
    for r in done:
        r["max_abs_v_diff"] = float(np.abs(r["V"] - ref["V"]).max())
        r["eps_optimal"] = r["greedy_loss_bound"] <= args.eps
    peers_ok = [r for r in done if r["family"] == "peer" and r["eps_optimal"]]
    best_peer = min(peers_ok, key=lambda r: r["solve"]) if peers_ok else None
    rows = []
    for r in recs:
        if r["status"] == "ok" and "V" in r:
            speed = f"{best_peer['solve'] / r['solve']:.2f}x" if best_peer else "-"
            r["speedup_vs_best_peer"] = best_peer["solve"] / r["solve"] if best_peer else None
            sweeps = "-" if r.get("outer") is None else fmt_num(r["outer"], 6)
            if r.get("inner"):
                sweeps += f" + {r['inner']}"
            rows.append([r["label"], f"{r['solve']:.2f}", f"{r['wall']:.1f}", sweeps,
                         fmt_num(r.get("transitions_per_s", 0) / 1e6 if r.get("transitions_per_s") else None),
                         speed, f"{r['max_abs_v_diff']:.1e}", f"{r['greedy_loss_bound']:.1e}"
                         + ("" if r["eps_optimal"] else " NOT eps-opt")])
        else:
            what = {"cap": f"> {args.cap:g} s (cap)", "skipped": f"> {args.cap:g} s (skipped: capped at lower gamma)",
                    "setup-timeout": f"setup > {args.setup_limit:g} s", "failed": "FAILED"}[r["status"]]
            rows.append([r["label"], what, "", "", "", "", "", ""])
    head = (f"Part B: time to eps-optimal policy, {m['desc']}, gamma {gamma}, eps {args.eps:g}, cap {args.cap:g} s\n"
            f"solve = time after model setup (hpcql: wall_seconds - io phase); wall includes setup/model build. "
            f"sweeps = full Bellman sweeps (+ policy-evaluation sweeps / Krylov matvecs, 1/A of the work each). "
            f"Reference V: {ref['label'] + ' (||V-V*|| <= %.1e)' % ref['v_error_bound'] if ref else 'none'}. "
            f"Speedup vs fastest eps-optimal peer: {best_peer['label'] if best_peer else 'none'}. "
            f"Span-rule solvers may return V shifted by a constant (large max|V-Vref|): judge every row by "
            f"'greedy loss <=' = gamma*span(TV-V)/(1-gamma), which must be <= eps.")
    return format_table(["solver", "solve s", "wall s", "sweeps", "M trans/s", "vs best peer", "max|V-Vref|",
                         "greedy loss <="], rows, title=head)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small MDPs (~2 min)")
    ap.add_argument("--cap", type=float, default=None, help="seconds per solve, counted after its model setup (default 30; quick 5)")
    ap.add_argument("--setup-limit", type=float, default=300.0, help="seconds allowed before a solve starts")
    ap.add_argument("--json", default="bench-results/bench_tabular.json")
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--gammas", default=None, help="comma list (default 0.99,0.999; quick 0.99)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads for mdpsolver")
    ap.add_argument("--mdps", default="gridworld,random")
    ap.add_argument("--states", type=int, default=None, help="states per MDP (default 10^6; quick 10^4)")
    ap.add_argument("--solvers", default="", help="comma list of substrings selecting Part B solvers")
    ap.add_argument("--rerun-capped", action="store_true",
                    help="run every solver at every gamma (default: skip one that hit the cap at a smaller gamma)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--float32", action="store_true",
                    help="Part A also times float32 probabilities (algo.float32): kernel and hpcql runs")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--gamma", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, Path(args.model), args.gamma, args.eps, Path(args.result))
        return 0

    args.gammas = [float(g) for g in (args.gammas or ("0.99" if args.quick else "0.99,0.999")).split(",")]
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.cap = args.cap if args.cap is not None else (5.0 if args.quick else 30.0)
    states = args.states or (10_000 if args.quick else 1_000_000)
    args.part_a_sweeps = 100 if args.quick else 10
    args.sweep_reps = 21 if args.quick else 7
    args.triad_elements = 2 ** 22 if args.quick else 2 ** 25
    t_start = time.perf_counter()
    out: dict[str, Any] = {"machine": machine_info(), "args": {k: v for k, v in vars(args).items()
                                                               if k not in ("worker", "model", "gamma", "result")}}
    try:
        import mdpsolver  # noqa: F401
        import mdptoolbox  # noqa: F401
        from importlib.metadata import version
        out["versions"] = {p: version(p) for p in ("numpy", "scipy", "numba", "pymdptoolbox", "mdpsolver", "hpcql")}
    except Exception as exc:  # noqa: BLE001
        out["versions"] = {"error": repr(exc)}
    print(f"machine: {out['machine'].get('cpu_model', '?')}, {out['machine']['cpus']} cpus, "
          f"load {out['machine'].get('loadavg_start')}; versions {out['versions']}", flush=True)

    models = []
    for kind in args.mdps.split(","):
        t = time.perf_counter()
        models.append(build_mdp(kind.strip(), states))
        print(f"built {models[-1]['desc']} ({models[-1]['nnz']:,} transitions) in {time.perf_counter() - t:.1f} s",
              flush=True)
    out["mdps"] = [{k: m[k] for k in ("kind", "desc", "env", "S", "A", "nnz")} for m in models]

    (REPO / "bench-results").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tabular-tmp-", dir=REPO / "bench-results"))
    report = []
    try:
        if not args.skip_a:
            text = part_a(models, args, tmp, out)
            print("\n" + text + "\n", flush=True)
            report.append(text)
        if not args.skip_b:
            text = part_b(models, args, tmp, out)
            print("\n" + text + "\n", flush=True)
            report.append(text)
    finally:
        out["total_seconds"] = time.perf_counter() - t_start
        path = write_json(args.json, out)
        print(f"wrote {path} (total {out['total_seconds']:.0f} s)")
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
