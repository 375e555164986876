"""SIGTERM / SIGUSR1 (what SLURM sends before a time limit or on preemption).

The handler only records the signal; solvers check ``requested()`` once per
iteration, agree across ranks, write a checkpoint and exit with
``EXIT_CHECKPOINTED``. A second signal changes nothing: the write in progress
finishes (or, if the process is killed, the previous checkpoint stays intact
because checkpoints are written under a temporary name and renamed).
"""

from __future__ import annotations

import signal

_received: list[int] = []


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)


def install() -> None:
    """Route SIGTERM and SIGUSR1 to the flag."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def ignore_from_now_on() -> None:
    """After the run's outcome is decided: ignore SIGTERM/SIGUSR1 for the rest of the process.

    Python resets its own handlers to the default (terminate) at interpreter shutdown, so a
    signal arriving during shutdown or MPI_Finalize would kill a rank that already finished;
    ignored signals are left ignored.
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def requested() -> bool:
    """True once a stop signal has arrived on this rank."""
    return bool(_received)


def reset() -> None:
    """Forget received signals (tests)."""
    _received.clear()
