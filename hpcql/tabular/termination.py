"""Distributed termination detection for asynchronous solvers (four-counter waves).

Ranks repeatedly start a non-blocking sum-reduction ("wave") of
``[messages sent, messages received, busy]``. ``busy`` says the rank did work
that matters since its last contribution (a sweep that moved a value by at least
the threshold, a received message, a send still pending). The run is over when
two consecutive waves report nobody busy and identical totals with
sent == received: the receives counted by the earlier wave equal the sends
counted by the later one, so no message was in flight between them (Mattern's
four-counter argument), and no rank had anything left to do. Two more summed
fields carry run-control requests (checkpoint due, stop signal) so that every
rank acts on them at the same wave.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI


class TerminationDetector:
    """Non-blocking detection; call ``poll`` from the work loop (collective in effect)."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.sent = 0
        self.received = 0
        self.busy_since_wave = True
        self._contrib = np.zeros(5, dtype=np.int64)
        self._total = np.zeros(5, dtype=np.int64)
        self.checkpoint_due = False
        self.stop_requested = False
        self._req: MPI.Request | None = None
        self._previous: np.ndarray | None = None
        self.waves = 0

    def mark_busy(self) -> None:
        """Record that this rank did work that may change the outcome."""
        self.busy_since_wave = True

    def poll(self, busy_now: bool, due: bool = False, stop: bool = False) -> bool:
        """Advance the detector; True once every rank may stop.

        After a wave completes, ``checkpoint_due`` / ``stop_requested`` say
        whether any rank asked for a checkpoint / got a stop signal.
        """
        self.checkpoint_due = self.stop_requested = False
        if self._req is None:
            self._contrib[:] = (self.sent, self.received, int(busy_now or self.busy_since_wave), int(due), int(stop))
            self.busy_since_wave = False
            self._req = self.comm.Iallreduce(self._contrib, self._total, op=MPI.SUM)
            return False
        if not self._req.Test():
            return False
        self._req = None
        self.waves += 1
        total = self._total[:3].copy()
        self.checkpoint_due, self.stop_requested = bool(self._total[3]), bool(self._total[4])
        quiet = total[2] == 0 and total[0] == total[1]
        done = quiet and self._previous is not None and np.array_equal(total, self._previous)
        self._previous = total if quiet else None
        return bool(done)
