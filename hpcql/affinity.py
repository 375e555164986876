"""Which cores a rank runs on: binding unbound ranks, a rank's local index and CPU share.

MPICH's ``mpiexec`` leaves ranks unbound, and the kernel then moves them between cores
mid-run: on a small machine that cost 2-rank runs some 20-30% (cache refills, skew in
every collective; ``scripts/bench_qlearning.py --no-bind``). ``bind_ranks`` does what
``srun --cpu-bind=cores`` or ``mpiexec -bind-to core`` would: when every rank of a node
sees the same CPU set and they fit, each gets its own equal, contiguous share of it.
Ranks a launcher already bound (different sets) are left alone.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from mpi4py import MPI


def _cpus() -> list[int] | None:
    """This process's CPU set, sorted (None where the OS does not expose it)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


@contextmanager
def node_comm(comm: MPI.Comm) -> Iterator[MPI.Comm]:
    """The ranks of ``comm`` on this node, in ``comm``'s order (collective; freed on exit)."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        yield local
    finally:
        local.Free()


def _cpu_sets(local: MPI.Comm) -> tuple[list[int] | None, list[list[int] | None]]:
    """(this rank's CPU set, every rank's of ``local``) (collective on ``local``)."""
    cpus = _cpus()
    return cpus, local.allgather(cpus)


def share_of(cpus: list[int], local_rank: int, local_size: int) -> list[int]:
    """Local rank ``local_rank``'s contiguous share of ``cpus`` when ``local_size`` ranks split them."""
    per = len(cpus) // local_size
    return cpus[local_rank * per:(local_rank + 1) * per]


def bind_ranks(comm: MPI.Comm, mode: str) -> list[int] | None:
    """Bind this rank to its share of its node's CPUs when the launcher did not (collective).

    ``mode``: ``"auto"`` or ``"off"``. Returns the CPUs bound to, or None when nothing was
    changed: off, one rank on the node, ranks already bound by the launcher (their sets
    differ), more ranks than CPUs, or no affinity interface.
    """
    with node_comm(comm) as local:
        cpus, sets = _cpu_sets(local)
        if (mode == "off" or local.size < 2 or cpus is None or any(s != cpus for s in sets)
                or len(cpus) < local.size):
            return None
        mine = share_of(cpus, local.rank, local.size)
        os.sched_setaffinity(0, mine)
        return mine


def node_share(comm: MPI.Comm) -> tuple[int, int]:
    """(local rank, CPUs this rank may use alone): its CPU set divided among the node's ranks
    that share exactly that set (collective)."""
    with node_comm(comm) as local:
        cpus, sets = _cpu_sets(local)
        if cpus is None:
            return local.rank, max(1, (os.cpu_count() or 1) // local.size)
        return local.rank, max(1, len(cpus) // sum(s == cpus for s in sets))
