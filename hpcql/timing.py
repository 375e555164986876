"""Per-phase wall-clock timers and their aggregation across ranks."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from mpi4py import MPI

PHASES = ("compute", "exchange", "reduce", "wait", "io")


class PhaseTimer:
    """Accumulates seconds spent per named phase on this rank.

    Phases may nest, and ``add`` may be called inside an open phase: time booked to an
    inner phase is taken out of the enclosing one, so no second is counted twice (a
    compute phase that polls MPI books the polls as exchange, not as compute as well).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self._booked_inside: list[float] = []  # per open phase: seconds booked to inner phases

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block into ``name`` (less what inner phases and ``add`` booked)."""
        t0 = time.perf_counter()
        self._booked_inside.append(0.0)
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            inner = self._booked_inside.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + dt - inner
            if self._booked_inside:
                self._booked_inside[-1] += dt

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name`` (and take them out of the enclosing open phase)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self._booked_inside:
            self._booked_inside[-1] += seconds

    def aggregate(self, comm: MPI.Comm) -> dict[str, dict[str, float]]:
        """Min/mean/max of every phase over the ranks of ``comm`` (collective)."""
        names = sorted(set().union(*comm.allgather(set(self.seconds))))
        local = np.array([self.seconds.get(n, 0.0) for n in names], dtype=np.float64)
        lo, hi, tot = np.empty_like(local), np.empty_like(local), np.empty_like(local)
        comm.Allreduce(local, lo, op=MPI.MIN)
        comm.Allreduce(local, hi, op=MPI.MAX)
        comm.Allreduce(local, tot, op=MPI.SUM)
        return {
            n: {"min": float(lo[i]), "mean": float(tot[i] / comm.size), "max": float(hi[i])}
            for i, n in enumerate(names)
        }
