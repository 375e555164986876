"""``hpcql submit``: render the job script and hand it to ``sbatch``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hpcql.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, BadInput

if TYPE_CHECKING:  # the parser imports this module on every `hpcql run`: keep jinja2 out of it
    from hpcql.slurm.render import JobSpec


def parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch printed no job id: {stdout.strip()!r}")
    return job_id


def write_script(spec: JobSpec, text: str) -> Path:
    """Keep the rendered script beside the runs (the ``--output`` directory must exist anyway)."""
    spec.runs_root.mkdir(parents=True, exist_ok=True)
    path = spec.runs_root / f"{spec.job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.sbatch"
    path.write_text(text)
    return path


def sbatch(script: Path, wait: bool = False, timeout: float | None = None) -> str:
    """Submit ``script``; returns the job id (with ``wait``, after the job ended)."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise BadInput("sbatch not found on PATH (use --dry-run to only print the script)")
    cmd = [exe, "--parsable"] + (["--wait"] if wait else []) + [str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and not (wait and proc.stdout.strip()):
        raise BadInput(f"sbatch rejected the job: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = parse_job_id(proc.stdout)
    if wait and proc.returncode != 0:
        raise RuntimeError(f"job {job_id} failed (sbatch --wait exit {proc.returncode}); "
                           f"see the log under {script.parent}")
    return job_id


def submit_options(args: argparse.Namespace) -> dict:
    """Command-line resource options, None where not given."""
    return {
        "nodes": args.nodes, "ntasks_per_node": args.ntasks_per_node, "cpus_per_task": args.cpus_per_task,
        "time": args.time, "partition": args.partition, "account": args.account, "qos": args.qos,
        "gpus_per_node": args.gpus, "mem": args.mem, "launcher": args.launcher,
        "signal_seconds": args.signal_seconds,
    }


def run_dirs(spec: JobSpec, job_id: str) -> list[Path]:
    """Where each array task (or the job) writes its results."""
    if not spec.array:
        return [spec.runs_root / job_id]
    return [spec.runs_root / job_id / f"{i}-{p.label}" for i, p in enumerate(spec.points)]


def cmd_submit(args: argparse.Namespace) -> int:
    """``hpcql submit``: print the script (--dry-run) or submit it and print the job id."""
    from hpcql.slurm.render import build_spec, render

    try:
        spec = build_spec(args.configs, list(args.set or []), list(args.sweep or []), submit_options(args),
                          out_dir=args.out_dir, array=args.array is not None,
                          array_throttle=_throttle(args.array))
        text = render(spec)
        if args.dry_run:
            sys.stdout.write(text)
            return EXIT_OK
        script = write_script(spec, text)
        job_id = sbatch(script, wait=args.wait)
        print(job_id)
        kind = f"array job 0-{len(spec.points) - 1}" if spec.array else "job"
        sys.stderr.write(f"hpcql: submitted {kind} {job_id} ({spec.ntasks} rank(s), script {script})\n")
        for d in run_dirs(spec, job_id):
            sys.stderr.write(f"hpcql:   run dir {d}\n")
        return EXIT_OK
    except BadInput as exc:
        sys.stderr.write(f"hpcql: error: {exc}\n")
        return EXIT_BAD_INPUT
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        sys.stderr.write(f"hpcql: submit failed: {exc}\n")
        return EXIT_INTERNAL


def _throttle(value: str | None) -> int:
    """``--array`` takes an optional ``%N`` (at most N tasks at once)."""
    if not value:
        return 0
    text = value.lstrip("%")
    if not text.isdigit() or int(text) < 1:
        raise BadInput(f"--array {value!r}: expected nothing or %N (tasks running at once)")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``hpcql submit`` (the resources override the config's [slurm] section)."""
    p.add_argument("configs", nargs="+", metavar="CONFIG.toml", help="job config(s); several make a job array")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--sweep", action="append", metavar="SECTION.KEY=V1,V2,...",
                   help="one array task per value (several --sweep: every combination)")
    p.add_argument("--array", nargs="?", const="", metavar="%N",
                   help="submit as a job array (implied by several configs or --sweep); %%N: at most N at once")
    p.add_argument("--nodes", "-N", type=int)
    p.add_argument("--ntasks-per-node", type=int, help="MPI ranks per node")
    p.add_argument("--cpus-per-task", "-c", type=int, help="CPUs (threads) per rank")
    p.add_argument("--time", "-t", help="time limit, e.g. 01:30:00")
    p.add_argument("--partition", "-p")
    p.add_argument("--account", "-A")
    p.add_argument("--qos")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs per node (selects the GPU template)")
    p.add_argument("--mem", help="memory per node, e.g. 32G")
    p.add_argument("--launcher", choices=["srun", "mpiexec"], help="how ranks start inside the job")
    p.add_argument("--signal-seconds", type=int, help="USR1 this long before the time limit (0: off)")
    p.add_argument("--out-dir", help="root of the per-job run directories (default: the config's run.out_dir)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="return when the job has ended (sbatch --wait)")
