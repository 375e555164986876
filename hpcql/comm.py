"""Thin MPI helpers: error agreement across ranks, job-wide abort, waits that yield the CPU.

Modules receive a communicator; only the command line fetches COMM_WORLD.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable, TypeVar

import numpy as np
from mpi4py import MPI

from hpcql.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BadInput, RankFailure

T = TypeVar("T")


def collective(comm: MPI.Comm, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank and agree on failure.

    If any rank raises, every rank raises: ``BadInput`` (with the lowest failing
    rank's message) when that rank's error was bad input, else ``RankFailure``.
    No rank is left waiting in a later collective.
    """
    result: T | None = None
    status: tuple[str, str] | None = None
    try:
        result = fn()
    except BadInput as exc:
        status = ("bad-input", str(exc))
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
        status = ("error", f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    statuses = comm.allgather(status)
    for rank, st in enumerate(statuses):
        if st is None:
            continue
        kind, msg = st
        if kind == "bad-input":
            raise BadInput(msg, agreed=True)
        raise RankFailure(f"rank {rank} failed: {msg}")
    return result  # type: ignore[return-value]


def yield_until(done: Callable[[], bool], between: Callable[[], None] | None = None) -> None:
    """Test ``done`` until it holds, running ``between`` (if given) and giving the CPU away between tests.

    MPICH's blocking waits spin; with more ranks than cores (a laptop, a 2-core VM at 4
    ranks) a spinning rank takes the core another rank needs to make the progress it waits for.
    """
    while not done():
        if between is not None:
            between()
        os.sched_yield()


def wait_yielding(request: MPI.Request, between: Callable[[], None] | None = None) -> None:
    """Complete ``request`` the ``yield_until`` way."""
    yield_until(request.Test, between)


def allreduce_yielding(comm: MPI.Comm, local: np.ndarray, out: np.ndarray | None = None,
                       op: MPI.Op = MPI.SUM) -> np.ndarray:
    """``comm.Allreduce(local, out, op)`` completed the ``yield_until`` way; returns ``out`` (new if not given).

    For the reductions inside solver loops: under MPICH a blocking one spins, and oversubscribed
    ranks then wait a scheduler slice per reduction (Debian's MPICH 4.0.2, 3 ranks on 2 cores: 5x slower).
    """
    if out is None:
        out = np.empty_like(local)
    wait_yielding(comm.Iallreduce(local, out, op=op))
    return out


def displacements(counts: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum of ``counts`` (same length): the displacements of a v-collective."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


ABORT_GRACE_SECONDS = 0.5


def abort_job(comm: MPI.Comm, message: str, code: int = EXIT_INTERNAL) -> None:
    """Print ``message`` naming this rank and end every rank of the job now."""
    sys.stderr.write(f"hpcql: rank {comm.rank}: {message}\n")
    sys.stderr.flush()
    # let the launcher's I/O proxy forward the message before Abort tears the job down
    # (seen once under load: hydra killed the ranks first and the reason was lost)
    time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(code)


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    return EXIT_BAD_INPUT if isinstance(exc, BadInput) else EXIT_INTERNAL
