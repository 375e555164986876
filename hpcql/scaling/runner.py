"""``hpcql scale``: run a job at several rank counts, several times each, and report.

Strong scaling keeps the config's problem. Weak scaling reads the config as the
problem of ONE rank and grows it with the rank count k (per engine):

- ``gridworld``: ``rows * k`` (cols fixed), so states per rank stay constant;
- ``random``: ``states * k``;
- ``gymnasium`` (DQN): nothing changes, ``env.num_envs`` is per rank already;
- ``mdp-file`` / ``gymnasium-tabular``: fixed models, weak scaling is refused.

Every run gets its own out_dir under ``OUT/runs/``; times come from its result.h5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hpcql.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, BadInput

if TYPE_CHECKING:
    from hpcql.config import Config


@dataclass
class RunRecord:
    """One measured run."""

    ranks: int
    repeat: int
    states: int
    wall_seconds: float
    iterations: int
    phases: dict[str, dict[str, float]]
    out_dir: str
    problem: dict


def weak_overrides(cfg, ranks: int) -> list[str]:
    """``--set`` overrides that make the config's one-rank problem ``ranks`` times larger."""
    env = cfg.env
    if env.kind == "gridworld":
        return [f"env.rows={env.rows * ranks}"]
    if env.kind == "random":
        return [f"env.states={env.states * ranks}"]
    if env.kind == "gymnasium":
        return []  # DQN: env.num_envs is per rank, the work per rank is constant already
    raise BadInput(f"--mode weak: [env] kind {env.kind!r} is a fixed model and cannot grow with the rank count; "
                   "use --mode strong, or a gridworld/random env")


def problem_size(cfg) -> dict:
    """Number of states and, for gridworlds, the grid shape (for the projection's halo model)."""
    env = cfg.env
    if env.kind == "gridworld":
        return {"states": env.rows * env.cols, "rows": env.rows, "cols": env.cols, "kind": "gridworld"}
    if env.kind == "random":
        return {"states": env.states, "kind": "random", "successors": env.successors, "actions": env.actions}
    return {"states": 0, "kind": env.kind}


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--ranks {text!r}: expected a comma-separated list of rank counts, e.g. 1,2,4") from None
    if not ranks or any(r < 1 for r in ranks):
        raise BadInput(f"--ranks {text!r}: rank counts must be >= 1")
    return sorted(set(ranks))


def launch_command(launcher: str, ranks: int, args: argparse.Namespace) -> list[str]:
    """The command starting ``ranks`` ranks: the mpich/site mpiexec, or srun (a step in the
    current allocation, or an allocation of its own when run outside one)."""
    if launcher == "mpiexec":
        local = Path(sys.executable).parent / "mpiexec"
        exe = str(local) if local.exists() else shutil.which("mpiexec")
        if not exe:
            raise BadInput("--launcher mpiexec: mpiexec not found (pip install mpich, or load the site MPI)")
        return [exe, "-n", str(ranks)]
    exe = shutil.which("srun")
    if not exe:
        raise BadInput("--launcher slurm: srun not found on PATH (no SLURM here? use --launcher mpiexec)")
    cmd = [exe, f"--mpi={args.mpi}", "-n", str(ranks), "--cpus-per-task=1", "--kill-on-bad-exit=1"]
    for opt in ("partition", "account", "time"):
        if getattr(args, opt):
            cmd.append(f"--{opt}={getattr(args, opt)}")
    return cmd


def read_result(path: Path) -> tuple[float, int, dict, int]:
    """(wall_seconds, iterations, phases, ranks) from a result.h5."""
    import h5py

    with h5py.File(path, "r") as f:
        a = f.attrs
        return (float(a["wall_seconds"]), int(a.get("iterations", 0)), json.loads(a["phase_seconds_json"]),
                int(a["ranks"]))


def run_point(config: str | None, overrides: list[str], ranks: int, repeat: int, out: Path,
              args: argparse.Namespace) -> RunRecord:
    """One run at ``ranks`` ranks; raises RuntimeError (with the output tail) on failure."""
    from hpcql.config import load_config

    run_dir = out / "runs" / f"ranks{ranks:05d}-rep{repeat}"
    sets = overrides + [f"run.out_dir={run_dir}", "run.overwrite=true", "run.plots=false", "run.progress=log"]
    cfg = load_config(config, sets)
    cmd = launch_command(args.launcher, ranks, args) + [sys.executable, "-m", "hpcql", "run"]
    cmd += ([config] if config else []) + [x for s in sets for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{ranks} rank(s), repeat {repeat}: timed out after {args.timeout:g}s: "
                           f"{' '.join(cmd)}") from None
    (run_dir / "scale-run.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "scale-run.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode == EXIT_BAD_INPUT:
        raise BadInput(child_error(proc.stderr) + f" (scale run: {ranks} rank(s), log {run_dir / 'scale-run.log'})")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise RuntimeError(f"{ranks} rank(s), repeat {repeat}: exit {proc.returncode}: " + " | ".join(tail))
    wall, iters, phases, got_ranks = read_result(run_dir / "result.h5")
    if got_ranks != ranks:
        raise RuntimeError(f"asked for {ranks} rank(s) but the run had {got_ranks} (launcher {args.launcher})")
    size = problem_size(cfg)
    return RunRecord(ranks, repeat, size["states"], wall, iters, phases, str(run_dir), size)


_CHILD_ERROR = re.compile(r"^hpcql: (?:rank \d+: )?error: (.+)$", re.M)


def child_error(stderr: str) -> str:
    """The first ``hpcql: [rank N: ]error: ...`` message of a run that exited 2 (without the prefix)."""
    found = _CHILD_ERROR.search(stderr)
    lines = stderr.strip().splitlines()
    return found.group(1).strip() if found else lines[-1].strip() if lines else "bad input (exit 2), no message"


def check_arguments(args: argparse.Namespace) -> tuple[Config, list[int], dict[int, list[str]], Path]:
    """Everything that can be checked before a run starts: the rank counts, the srun options, the
    config at every rank count (weak scaling grows it) and the output directory (created here).

    Returns (config, rank counts, the extra ``--set`` overrides per rank count, output directory).
    """
    from hpcql.config import load_config
    from hpcql.outdir import make_out_dir
    from hpcql.slurm.validate import check_resource

    ranks = parse_ranks(args.ranks)
    if args.repeat < 1:
        raise BadInput(f"--repeat {args.repeat}: must be >= 1")
    for key in ("partition", "account", "time", "mpi"):
        if getattr(args, key) is not None:
            check_resource(key, getattr(args, key), f"--{key}")
    base_sets = list(args.set or [])
    cfg = load_config(args.config, base_sets)
    extra = {k: weak_overrides(cfg, k) if args.mode == "weak" else [] for k in ranks}
    for k in ranks:  # weak scaling: the grown problem must be a valid config too
        load_config(args.config, base_sets + extra[k])
    out = Path(args.out) if args.out else Path(cfg.run.out_dir) / f"scaling-{args.mode}"
    make_out_dir(out, "--out" if args.out else "[run] out_dir", out / "scaling.csv", args.overwrite,
                 "an earlier study: pass --overwrite to replace it, or choose another --out")
    return cfg, ranks, extra, out


def run_study(args: argparse.Namespace) -> Path:
    """The whole study; returns the output directory."""
    from hpcql.scaling.projection import write_projection
    from hpcql.scaling.table import summarize, write_outputs

    cfg, ranks, extra, out = check_arguments(args)
    base_sets = list(args.set or [])
    records: list[RunRecord] = []
    for k in ranks:
        for rep in range(args.repeat):
            rec = run_point(args.config, base_sets + extra[k], k, rep, out, args)
            records.append(rec)
            print(f"hpcql scale: {args.mode} {k} rank(s) run {rep + 1}/{args.repeat}: {rec.wall_seconds:.3f} s, "
                  f"{rec.iterations} iterations, {rec.states:,} states", file=sys.stderr)
    rows = summarize(records, args.mode)
    write_outputs(records, rows, out, args.mode, title=f"{cfg.run.name}: {args.mode} scaling ({args.launcher})")
    write_projection(records, rows, out, mode=args.mode, states=args.project_states,
                     ranks=args.project_ranks, alpha=args.alpha, beta=args.beta)
    return out


def cmd_scale(args: argparse.Namespace) -> int:
    try:
        out = run_study(args)
    except BadInput as exc:
        sys.stderr.write(f"hpcql: error: {exc}\n")
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        sys.stderr.write(f"hpcql: scale: run failed: {exc}\n")
        return EXIT_INTERNAL
    for name in ("scaling.csv", "scaling.md", "speedup.png", "efficiency.png", "phases.png", "projection.md"):
        print(out / name)
    return EXIT_OK


def number(low: float, strict: bool = False, integer: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low`` (``strict``: > low), optionally a whole one."""
    what = f"{'a whole' if integer else 'a finite'} number {'>' if strict else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if strict else value >= low)
                and (value.is_integer() or not integer)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    return parse


def number_list(item: Callable[[str], float]) -> Callable[[str], list[float]]:
    """An argparse type: a non-empty comma-separated list of ``item`` numbers."""

    def parse(text: str) -> list[float]:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers")
        return values

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="job config (TOML); omitted: the built-in default job")
    p.add_argument("--ranks", required=True, help="rank counts, e.g. 1,2,4")
    p.add_argument("--mode", choices=["strong", "weak"], default="strong",
                   help="strong: fixed problem; weak: the config is the one-rank problem, grown with the ranks")
    p.add_argument("--launcher", choices=["mpiexec", "slurm"], default="mpiexec",
                   help="mpiexec (laptop, or inside an allocation) or slurm (srun: a step, or its own allocation)")
    p.add_argument("--repeat", type=int, default=3, help="runs per rank count (the median is reported)")
    p.add_argument("--out", help="output directory (default: <run.out_dir>/scaling-<mode>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study's tables and plots in --out")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--timeout", type=number(0, strict=True), default=1800.0,
                   help="seconds per run before it counts as hung")
    p.add_argument("--partition", "-p", help="srun --partition (launcher slurm)")
    p.add_argument("--account", "-A", help="srun --account (launcher slurm)")
    p.add_argument("--time", "-t", help="srun --time per run (launcher slurm)")
    p.add_argument("--mpi", default="pmi2", help="srun --mpi plugin (launcher slurm; default pmi2)")
    p.add_argument("--project-states", type=number_list(number(1)), default=[1e9],
                   help="problem sizes (states) for the projection, e.g. 1e8,1e9")
    p.add_argument("--project-ranks", type=number_list(number(1, integer=True)),
                   default=[100, 256, 1024, 4096, 10000],
                   help="rank counts for the projection")
    p.add_argument("--alpha", type=number(0), help="use this latency (s) instead of the fitted one")
    p.add_argument("--beta", type=number(0), help="use this inverse bandwidth (s/byte) instead of the fitted one")
