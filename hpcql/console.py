"""The one place for rank-0 console output: messages, progress, summaries."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

from mpi4py import MPI
from tqdm import tqdm


def _launched_from_terminal(max_depth: int = 4) -> bool:
    """True when this process or its launcher (mpiexec, srun: a few ancestors up) writes to a
    terminal. Under mpiexec a rank's own stdout is a pipe; batch jobs and CI have no terminal."""
    if sys.stdout.isatty():
        return True
    pid = os.getpid()
    for _ in range(max_depth):
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # parent pid
            if pid <= 1:
                return False
            if os.readlink(f"/proc/{pid}/fd/2").startswith(("/dev/pts/", "/dev/tty")):
                return True
        except (OSError, ValueError, IndexError):
            return False
    return False


class Console:
    """Rank-0 output. Every other rank stays silent (warnings included).

    ``progress`` is ``"auto"`` (a bar on a terminal, status lines otherwise),
    ``"bar"``, ``"log"`` or ``"none"``.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        progress: str = "auto",
        status_every: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.comm = comm
        self.stream = stream or sys.stdout
        self.enabled = comm.rank == 0
        if progress == "auto":
            progress = "bar" if self.stream.isatty() or _launched_from_terminal() else "log"
        self.progress_mode = progress
        self.status_every = status_every

    def info(self, message: str) -> None:
        """Print a line on rank 0."""
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """Print a warning line on rank 0 (stderr)."""
        if self.enabled:
            print(f"hpcql: warning: {message}", file=sys.stderr, flush=True)

    def tracker(self, label: str, target: float | None = None, total: int | None = None) -> "ProgressTracker":
        """A progress tracker for an iterative phase (see ``ProgressTracker``)."""
        mode = self.progress_mode if self.enabled else "none"
        return ProgressTracker(self, label, mode, target=target, total=total)

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        """Print an aligned text table on rank 0."""
        if not self.enabled:
            return
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        self.info(title)
        self.info(fmt.format(*header))
        for row in rows:
            self.info(fmt.format(*[str(c) for c in row]))


class ProgressTracker:
    """Progress of an iterative solve or training loop.

    For convergence loops give ``target`` (the residual to reach): progress and
    ETA come from the observed contraction of the residual. For budgets give
    ``total`` (steps). On a terminal a tqdm bar; in batch logs one status line
    every ``status_every`` seconds.
    """

    def __init__(self, console: Console, label: str, mode: str, target: float | None, total: int | None) -> None:
        self.console = console
        self.label = label
        self.mode = mode
        self.target = target
        self.total = total
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.first_residual: float | None = None
        self.bar: tqdm | None = None
        if mode == "bar":
            self.bar = tqdm(total=100 if target is not None else total, desc=label, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def _fraction(self, step: int, residual: float | None) -> float:
        if self.target is not None and residual is not None and residual > 0:
            if self.first_residual is None:
                self.first_residual = residual
            first = max(self.first_residual, residual)
            if first <= self.target:
                return 1.0
            done = math.log(first / residual) / math.log(first / self.target)
            return min(max(done, 0.0), 1.0)
        if self.total:
            return min(step / self.total, 1.0)
        return 0.0

    def update(self, step: int, residual: float | None = None, **fields: float) -> None:
        """Report that ``step`` iterations are done (cheap; call every iteration)."""
        if self.mode == "none":
            return
        now = time.perf_counter()
        frac = self._fraction(step, residual)
        elapsed = now - self.t0
        rate = step / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {step}"]
        if residual is not None:
            parts.append(f"residual {residual:.3e}" + (f" -> {self.target:.1e}" if self.target else ""))
        parts.append(f"{rate:.1f} it/s")
        parts += [f"{k} {v:.4g}" for k, v in fields.items()]
        if self.bar is not None:
            n = int(frac * self.bar.total) if self.bar.total else step
            if n > self.bar.n:
                self.bar.update(n - self.bar.n)
            if now - self.last_log > 0.2:
                self.bar.set_postfix_str(", ".join(parts[1:]), refresh=True)
                self.last_log = now
        elif self.mode == "log" and now - self.last_log >= self.console.status_every:
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            self.console.info(f"[{elapsed:8.1f}s] " + " | ".join(parts) + f" | {100 * frac:5.1f}% ETA {eta:.0f}s")
            self.last_log = now

    def close(self) -> None:
        """Finish the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
