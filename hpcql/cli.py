"""Command line: ``hpcql run | inspect | submit | scale`` and the exit-code contract.

Exit codes: 0 success, 2 bad input (one-line message naming what and where),
1 internal error, 3 checkpointed on a signal (please requeue), 4 stopped on a signal with
checkpoints disabled (nothing saved).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path
from typing import Callable

from hpcql import __version__
from hpcql.errors import (EXIT_BAD_INPUT, EXIT_CHECKPOINTED, EXIT_INTERNAL, EXIT_OK, EXIT_STOPPED, BadInput,
                          Checkpointed, RankFailure)

# algo.name -> "module:function" running the whole job (collective); imported lazily (torch is slow to import)
ENGINES: dict[str, str] = {
    "value-iteration": "hpcql.tabular.run:run_tabular",
    "policy-iteration": "hpcql.tabular.run:run_tabular",
    "q-learning": "hpcql.qlearning.run:run_qlearning",
    "dqn": "hpcql.dqn.run:run_dqn",
}


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"hpcql: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _engine(name: str) -> Callable:
    module, func = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), func)


def prepare_out_dir(cfg, comm) -> None:
    """Create out_dir; refuse to replace an existing result unless asked (collective)."""
    from hpcql.comm import collective
    from hpcql.outdir import make_out_dir
    from hpcql.results import result_path

    collective(comm, lambda: make_out_dir(
        Path(cfg.run.out_dir), "[run] out_dir", result_path(cfg), cfg.run.overwrite,
        "pass --overwrite (or --set run.overwrite=true) to replace it, or choose another out_dir"))


def cmd_run(args: argparse.Namespace) -> int:
    """``hpcql run``: the batch entry point, on every rank."""
    from hpcql import signals

    signals.install()  # before the heavy imports: a SLURM USR1 during start-up must not kill the rank
    try:
        return _run(args)
    finally:
        signals.ignore_from_now_on()


def _run(args: argparse.Namespace) -> int:
    """The body of ``hpcql run`` (signal handlers already installed)."""
    from mpi4py import MPI

    from hpcql.affinity import bind_ranks
    from hpcql.comm import abort_job
    from hpcql.config import load_config
    from hpcql.console import Console

    comm = MPI.COMM_WORLD
    overrides = (list(args.set or []) + (["run.overwrite=true"] if args.overwrite else [])
                 + (["checkpoint.fresh=true"] if args.fresh else []))
    try:
        cfg = load_config(args.config, overrides)
        console = Console(comm, cfg.run.progress, cfg.run.status_every_seconds)
        bound = bind_ranks(comm, cfg.run.bind_cores)
        console.info(f"hpcql {__version__}: {cfg.run.name}: {cfg.algo.name} ({cfg.algo.mode}) on {cfg.env.kind}, "
                     f"{comm.size} rank(s), out_dir {cfg.run.out_dir}"
                     + (f"; rank 0 bound to CPU(s) {bound} (run.bind_cores)" if bound else ""))
        prepare_out_dir(cfg, comm)
        _engine(cfg.algo.name)(cfg, comm, console)
        return EXIT_OK
    except BadInput as exc:
        if exc.agreed:
            if comm.rank == 0:
                sys.stderr.write(f"hpcql: error: {exc}\n")
            return EXIT_BAD_INPUT
        abort_job(comm, f"error: {exc}", EXIT_BAD_INPUT)
    except Checkpointed as exc:
        if not exc.saved:
            if comm.rank == 0:
                sys.stderr.write(f"hpcql: {exc}; checkpoints are disabled (checkpoint.enabled = false), nothing "
                                 f"was saved; exit {EXIT_STOPPED} = stopped, do not requeue\n")
            return EXIT_STOPPED
        if comm.rank == 0:
            sys.stderr.write(f"hpcql: {exc}; exit {EXIT_CHECKPOINTED} = checkpointed, please requeue\n")
        return EXIT_CHECKPOINTED
    except RankFailure as exc:
        if comm.rank == 0:
            sys.stderr.write(f"hpcql: {exc}\n")
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - any other failure must end every rank
        traceback.print_exc(file=sys.stderr)
        abort_job(comm, f"{type(exc).__name__}: {exc}", EXIT_INTERNAL)
    return EXIT_INTERNAL


def cmd_inspect(args: argparse.Namespace) -> int:
    """``hpcql inspect FILE.h5``."""
    from hpcql.inspect_file import inspect_file

    try:
        text, damaged = inspect_file(args.file)
    except BadInput as exc:
        sys.stderr.write(f"hpcql: error: {exc}\n")
        return EXIT_BAD_INPUT
    print(text)
    if damaged is not None:  # the summary is still worth printing; the exit code tells scripts
        sys.stderr.write(f"hpcql: error: {args.file}: checkpoint fails its integrity check: {damaged}\n")
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """``hpcql submit``: render a SLURM job script and sbatch it (hpcql.slurm.submit)."""
    from hpcql.slurm.submit import cmd_submit as submit

    return submit(args)


def cmd_scale(args: argparse.Namespace) -> int:
    """``hpcql scale``: a strong or weak scaling study (hpcql.scaling.runner)."""
    from hpcql.scaling.runner import cmd_scale as scale

    return scale(args)


def build_parser() -> ArgParser:
    parser = ArgParser(prog="hpcql", description="MPI batch toolkit for Q-learning and dynamic programming at scale.")
    parser.add_argument("--version", action="version", version=f"hpcql {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)

    run = sub.add_parser("run", help="run a job (launch under mpiexec/srun for several ranks)")
    run.add_argument("config", nargs="?", help="job config (TOML); omitted: the built-in default job")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    run.add_argument("--overwrite", action="store_true", help="replace an existing result in out_dir")
    run.add_argument("--fresh", action="store_true", help="ignore and delete checkpoints in out_dir")
    run.set_defaults(func=cmd_run)

    insp = sub.add_parser("inspect", help="summarise an MDP, result or checkpoint file")
    insp.add_argument("file")
    insp.set_defaults(func=cmd_inspect)

    from hpcql.scaling.runner import add_arguments as scale_arguments
    from hpcql.slurm.submit import add_arguments as submit_arguments

    subm = sub.add_parser("submit", help="submit a job (or a sweep as a job array) to SLURM")
    submit_arguments(subm)
    subm.set_defaults(func=cmd_submit)

    scale = sub.add_parser("scale", help="strong/weak scaling study: CSV, Markdown table, plots, projection")
    scale_arguments(scale)
    scale.set_defaults(func=cmd_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
