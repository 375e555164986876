"""Fault injection for tests (``[debug]``): a rank that fails, is slow, or gets a signal."""

from __future__ import annotations

import os
import signal
import time

from hpcql.config import DebugSection


class FaultInjector:
    """Called once per iteration; raises or sleeps on the configured rank."""

    def __init__(self, debug: DebugSection, rank: int) -> None:
        self.fail = debug.fail_rank == rank
        self.fail_at = debug.fail_at_iteration
        self.sleep = debug.slow_seconds if debug.slow_rank == rank else 0.0
        self.signal_at = debug.signal_at_iteration if debug.signal_rank == rank else -1

    def tick(self, iteration: int) -> None:
        """Apply the configured fault for ``iteration``."""
        if self.fail and iteration >= self.fail_at:
            raise RuntimeError(f"injected failure at iteration {iteration}")
        if self.sleep:
            time.sleep(self.sleep)
        if iteration == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
