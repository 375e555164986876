#!/usr/bin/env python
"""Checkpoint write/read throughput for a >= 1 GiB Q table at 1 and 2 ranks vs `dd`.

In one run, on the same disk: a sequential `dd` write (conv=fsync) and read of the
same size, then hpcql's checkpoint path (CheckpointStore.save: atomic, Fletcher32,
fsync, rename; and per-rank row reads) under `mpiexec -n 1` and `-n 2`. Page caches
are dropped before reads where the kernel allows it (reported). Prints a table,
writes JSON.

usage: python scripts/bench_checkpoint.py [--gib 1.0] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import mpiexec_cmd  # scripts/ is on sys.path when run as a script

ACTIONS = 4


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def dd(directory: Path, nbytes: int) -> dict[str, float]:
    """Sequential write (fsync) and read of nbytes with dd; GB/s."""
    target = directory / "dd.bin"
    count = max(1, nbytes // (16 << 20))
    out = {}
    for mode, args in (("write", ["if=/dev/zero", f"of={target}", "conv=fsync"]),
                       ("read", [f"if={target}", "of=/dev/null"])):
        if mode == "read":
            out["dropped_caches"] = drop_caches()
        t0 = time.perf_counter()
        subprocess.run(["dd", *args, "bs=16M", f"count={count}"], check=True, capture_output=True)
        out[mode] = count * (16 << 20) / (time.perf_counter() - t0) / 1e9
    target.unlink()
    return out


def worker(args: argparse.Namespace) -> None:
    """Run under mpiexec: save one checkpoint of the Q table, read it back."""
    import numpy as np
    from mpi4py import MPI

    from hpcql.checkpoint import CheckpointStore
    from hpcql.config import load_config
    from hpcql.partition import uniform_partition

    comm = MPI.COMM_WORLD
    states = int(args.gib * (1 << 30)) // (8 * ACTIONS)
    offsets = uniform_partition(states, comm.size)
    lo, hi = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
    q = np.random.default_rng(comm.rank).random((hi - lo, ACTIONS))
    cfg = load_config(None, [f"run.out_dir={args.dir}/ranks{comm.size}", "checkpoint.keep=1"])
    store = CheckpointStore(comm, cfg, engine="bench")
    comm.Barrier()
    t0 = time.perf_counter()
    path = store.save(1, offsets, {"Q": q})
    write_s = time.perf_counter() - t0
    dropped = drop_caches() if comm.rank == 0 else False
    comm.Barrier()
    from hpcql.checkpoint import Checkpoint

    ck = Checkpoint(path, 1, comm.size, {}, {})
    t0 = time.perf_counter()
    back = ck.rows("Q", lo, hi)
    comm.Barrier()
    read_s = time.perf_counter() - t0
    assert np.array_equal(back, q)
    if comm.rank == 0:
        print("RESULT " + json.dumps({"ranks": comm.size, "bytes": states * ACTIONS * 8, "write_s": write_s,
                                      "read_s": read_s, "dropped_caches": dropped}))
    comm.Barrier()
    if comm.rank == 0:
        path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir in .)")
    ap.add_argument("--json", default="bench-results/bench_checkpoint.json")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-ckpt-", dir="."))
    directory.mkdir(parents=True, exist_ok=True)
    nbytes = int(args.gib * (1 << 30))
    ref = dd(directory, nbytes)
    rows = []
    for n in [int(x) for x in args.ranks.split(",")]:
        res = subprocess.run(mpiexec_cmd(n) + [sys.executable, __file__, "--worker", "--gib", str(args.gib),
                              "--dir", str(directory)], capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            sys.exit(f"worker at {n} ranks failed:\n{res.stderr}")
        r = json.loads(re.search(r"^RESULT (.*)$", res.stdout, re.M).group(1))
        r["write_GBps"] = r["bytes"] / r["write_s"] / 1e9
        r["read_GBps"] = r["bytes"] / r["read_s"] / 1e9
        r["write_vs_dd"] = r["write_GBps"] / ref["write"]
        r["read_vs_dd"] = r["read_GBps"] / ref["read"]
        rows.append(r)
    print(f"checkpoint of a {nbytes / (1 << 30):.2f} GiB Q table in {directory} "
          f"(caches dropped before reads: {ref['dropped_caches']})")
    print(f"{'what':>14} {'write GB/s':>11} {'read GB/s':>10} {'write/dd':>9} {'read/dd':>8}")
    print(f"{'dd (16M, fsync)':>14} {ref['write']:>11.2f} {ref['read']:>10.2f} {1:>9.2f} {1:>8.2f}")
    for r in rows:
        print(f"{'hpcql ' + str(r['ranks']) + ' rank(s)':>14} {r['write_GBps']:>11.2f} {r['read_GBps']:>10.2f} "
              f"{r['write_vs_dd']:>9.2f} {r['read_vs_dd']:>8.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"dd": ref, "hpcql": rows, "gib": args.gib}, indent=2))
    print(f"wrote {args.json}")
    for p in directory.rglob("*"):
        if p.is_file():
            p.unlink()


if __name__ == "__main__":
    main()
