#!/usr/bin/env python
"""What hiding a gradient reduction behind computation costs in MPI: ``Iallreduce`` against ``Allreduce``.

The overlap scheme with ``algo.allreduce = "mpi"`` posts an ``Iallreduce`` of the DQN gradient
and tests it at a few progress points per update. MPICH moves a large message only inside MPI
calls, so how many tests it takes to complete, and the CPU those tests spend, decide how much
of the reduction overlap can hide. In one run, for each variant (the default environment, then
each ``--variant`` of MPICH settings): ``--ranks`` ranks time a blocking ``Allreduce`` of
``--floats`` float32 values (the baseline, after a barrier: the transfer proper), then post
``Iallreduce`` and test it every ``--gap-us`` microseconds of busy computation until it
completes. Prints a table (per-rank medians, worst rank) and writes JSON.

    python scripts/bench_iallreduce.py --variant MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM=sched_recursive_doubling
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import fmt_num, format_table, machine_info, mpiexec_cmd, run_capped, write_json  # scripts/ on sys.path

DQN_FLOATS = 67586  # CartPole's [256, 256] Q-network
PROGRESS_POINTS = 6  # MPI tests per update in the overlap scheme at two hidden layers
MARK = "IALLREDUCE-RESULT "


def busy(seconds: float) -> None:
    """Computation stand-in: spin (no MPI call) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def worker(floats: int, iters: int, gap: float) -> None:
    """Under mpiexec: measure on every rank, print rank 0's gathered summary as one JSON line."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    vec = np.ones(floats, dtype=np.float32)
    for _ in range(10):  # warm-up: connections, schedules
        comm.Allreduce(MPI.IN_PLACE, vec)
        comm.Iallreduce(MPI.IN_PLACE, vec).Wait()
    blocking, posting, inside, tests = [], [], [], []
    for _ in range(iters):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, vec)
        blocking.append(time.perf_counter() - t)
    for _ in range(iters):
        comm.Barrier()
        t = time.perf_counter()
        req = comm.Iallreduce(MPI.IN_PLACE, vec)
        posting.append(time.perf_counter() - t)
        spent, n, done = 0.0, 0, False
        while not done:
            busy(gap)
            t = time.perf_counter()
            done = bool(req.Test())
            spent += time.perf_counter() - t
            n += 1
        inside.append(spent)
        tests.append(n)
        vec[...] = 1.0  # keep the values finite
    mine = {
        "allreduce_us": statistics.median(blocking) * 1e6,
        "post_us": statistics.median(posting) * 1e6,
        "tests_median": statistics.median(tests),
        "tests_p90": float(np.percentile(tests, 90)),
        "done_within_points": sum(n <= PROGRESS_POINTS for n in tests) / len(tests),
        "in_tests_us": statistics.median(inside) * 1e6,
        "mpi_cpu_us": statistics.median(p + s for p, s in zip(posting, inside)) * 1e6,
    }
    ranks = comm.gather(mine, root=0)
    if comm.rank == 0:
        print(MARK + json.dumps(ranks), flush=True)


def parse_variant(text: str) -> dict[str, str]:
    """``NAME=VALUE[,NAME=VALUE...]`` as a dict (argparse ``type``: a malformed one exits 2)."""
    pairs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE[,NAME=VALUE...]")
        pairs[name.strip()] = value.strip()
    return pairs


def run_variant(args: argparse.Namespace, settings: dict[str, str]) -> list[dict[str, float]]:
    """One mpiexec run of the worker with ``settings`` added to the environment; per-rank results."""
    cmd = mpiexec_cmd(args.ranks) + [sys.executable, __file__, "--worker", "--floats", str(args.floats),
                                     "--iters", str(args.iters), "--gap-us", str(args.gap_us)]
    env = dict(os.environ, OMP_NUM_THREADS="1", **settings)
    with tempfile.TemporaryDirectory(prefix="bench_iallreduce_") as tmp:
        run = run_capped(cmd, args.timeout, Path(tmp) / "worker.log", env=env)  # kills mpiexec's group at the cap
    for line in run.output.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    outcome = "hit the --timeout cap" if run.status == "cap" else "failed"
    raise SystemExit(f"bench_iallreduce: variant {settings or 'default'} {outcome} (exit {run.returncode}): "
                     f"{run.output.strip().splitlines()[-1:]}")


def summary_row(label: str, ranks: list[dict[str, float]]) -> list[str]:
    """Worst rank for each figure (the one a collective waits for), done-within the least."""
    worst = {k: max(r[k] for r in ranks) for k in ranks[0]}
    least_done = min(r["done_within_points"] for r in ranks)
    return [label, fmt_num(worst["allreduce_us"]), fmt_num(worst["post_us"]),
            f"{worst['tests_median']:g} / {worst['tests_p90']:g}", f"{least_done:.0%}",
            fmt_num(worst["in_tests_us"]), fmt_num(worst["mpi_cpu_us"]),
            f"{worst['mpi_cpu_us'] / worst['allreduce_us']:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--floats", type=int, default=DQN_FLOATS, help=f"vector length (default {DQN_FLOATS})")
    ap.add_argument("--iters", type=int, default=300, help="reductions timed per kind (default 300)")
    ap.add_argument("--gap-us", type=float, default=150.0,
                    help="busy computation between tests, microseconds (default 150: an update's "
                         "progress points are 100-200 us apart)")
    ap.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME=VALUE[,NAME=VALUE]",
                    help="MPICH settings (environment) for another run (repeatable)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per variant (default 300)")
    ap.add_argument("--json", default="bench_iallreduce.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.floats, args.iters, args.gap_us * 1e-6)
        return
    variants = [("default", {})] + [(",".join(f"{k}={v}" for k, v in s.items()), s) for s in args.variant]
    results = {label: run_variant(args, settings) for label, settings in variants}
    headers = ["variant", "Allreduce us", "Iallreduce post us", "tests to complete (median / p90)",
               f"done within {PROGRESS_POINTS} tests", "us inside tests", "MPI CPU us (post + tests)",
               "x Allreduce"]
    print(format_table(headers, [summary_row(label, r) for label, r in results.items()],
                       title=f"{args.floats:,} float32 over {args.ranks} ranks, a test every "
                             f"{args.gap_us:g} us of computation (worst rank)"))
    path = write_json(args.json, {"machine": machine_info(), "ranks": args.ranks, "floats": args.floats,
                                  "iters": args.iters, "gap_us": args.gap_us, "progress_points": PROGRESS_POINTS,
                                  "variants": {label: {"settings": s, "per_rank": results[label]}
                                               for label, s in variants}})
    print(f"json: {path}")


if __name__ == "__main__":
    main()
