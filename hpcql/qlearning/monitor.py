"""Budget, schedule and metrics bookkeeping from agreed global totals.

Every rank feeds the same reduced totals (``TOTALS`` order) to its ``Monitor``,
so stop and evaluation decisions agree without extra messages; only rank 0
keeps the metric rows (CSV, console, learning-curve PNG).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np

from hpcql.config import QLearningAlgo
from hpcql.console import Console
from hpcql.errors import BadInput
from hpcql.qlearning.learner import COUNTERS
from hpcql.qlearning.schedules import epsilon_at

TOTALS = COUNTERS + ("agents", "elapsed", "out_of_time")
T = {name: i for i, name in enumerate(TOTALS)}
COLUMNS = ("seconds", "updates", "updates_per_s", "migrated_per_s", "mean_abs_td", "epsilon", "agents",
           "greedy_value_start", "optimal_value_start", "gap_start", "mean_gap")
STALL_LOG_ODDS = 50.0
"""A run stops as stalled after so many update-less episode starts that, at the start
update chance, they had at most e^-50 odds of happening in a run that can progress."""


def stall_limit(update_chance: float) -> float:
    """Episode starts without any Q update after which a run is stalled (see ``STALL_LOG_ODDS``)."""
    if update_chance >= 1.0:
        return STALL_LOG_ODDS
    if update_chance <= 0.0:
        return 0.0
    return STALL_LOG_ODDS / -math.log1p(-update_chance)


class Monitor:
    """Decides stop / evaluation points and records metric rows."""

    def __init__(self, algo: QLearningAlgo, comm_size: int, console: Console, t0: float,
                 update_chance: float = 1.0) -> None:
        self.algo = algo
        self.size = comm_size
        self.console = console
        self.t0 = t0
        self.next_eval = 1
        self.rows: list[dict[str, float]] = []
        self.last: tuple[float, float, float, float] = (t0, 0.0, 0.0, 0.0)  # time, updates, moved, abs_td sum
        self.last_row_time = t0
        self.tracker = console.tracker("updates", total=algo.budget_updates or None)
        self.epsilon = algo.epsilon_start
        self.stall_restarts = stall_limit(update_chance)
        self.progress_mark: tuple[float, float] | None = None  # (updates, restarts) when updates last grew

    def local_totals(self, counters: np.ndarray, n_agents: int) -> np.ndarray:
        """This rank's contribution to the reduced totals."""
        elapsed = time.perf_counter() - self.t0
        late = float(self.algo.budget_seconds > 0 and elapsed >= self.algo.budget_seconds)
        return np.concatenate([counters, [n_agents, elapsed, late]])

    def progress(self, totals: np.ndarray) -> float:
        """Fraction of the budget used (the larger of updates and time)."""
        frac = 0.0
        if self.algo.budget_updates:
            frac = totals[T["updates"]] / self.algo.budget_updates
        if self.algo.budget_seconds:
            frac = max(frac, totals[T["elapsed"]] / self.size / self.algo.budget_seconds)
        return min(frac, 1.0)

    def epsilon_for(self, progress: float) -> float:
        a = self.algo
        self.epsilon = epsilon_at(a.epsilon_schedule, a.epsilon_start, a.epsilon_end, a.epsilon_decay_fraction,
                                  progress)
        return self.epsilon

    def should_stop(self, totals: np.ndarray) -> bool:
        """Whether the budget is used; raises ``BadInput`` (agreed) when the run makes no updates."""
        self.check_stall(totals)
        a = self.algo
        return bool((a.budget_updates and totals[T["updates"]] >= a.budget_updates) or totals[T["out_of_time"]] > 0)

    def check_stall(self, totals: np.ndarray) -> None:
        """Raise (agreed) after ``stall_restarts`` episode starts, plus one per agent, without a Q update."""
        updates, restarts = float(totals[T["updates"]]), float(totals[T["restarts"]])
        if self.progress_mark is None or updates > self.progress_mark[0]:
            self.progress_mark = (updates, restarts)
        elif restarts - self.progress_mark[1] > self.stall_restarts + totals[T["agents"]]:
            raise BadInput(f"[algo] starts / start_states: no Q update in the last "
                           f"{int(restarts - self.progress_mark[1]):,} episode starts (after {int(updates):,} "
                           "updates): the episodes cannot reach budget_updates", agreed=True)

    def eval_due(self, totals: np.ndarray) -> bool:
        """True at the agreed evaluation points (k / eval_points of the budget)."""
        n = self.algo.eval_points
        prog = self.progress(totals)
        if n == 0 or prog >= 1.0 or prog < self.next_eval / n:
            return False
        self.next_eval = int(math.floor(prog * n)) + 1
        return True

    def check_agents(self, totals: np.ndarray, expected: int) -> None:
        """Agents held + in flight (moved - received) must equal the created count."""
        held = totals[T["agents"]] + totals[T["moved"]] - totals[T["received"]]
        if int(round(held)) != expected:
            raise RuntimeError(f"agent count not conserved: {int(round(held))} != {expected}")

    def record(self, totals: np.ndarray, evaluation: dict[str, float] | None = None, force: bool = False) -> None:
        """Add a metric row (rank 0) every status interval, at evaluations, or when forced."""
        if not self.console.enabled:
            return
        now = time.perf_counter()
        upd, moved, td = totals[T["updates"]], totals[T["moved"]], totals[T["abs_td"]]
        self.tracker.update(int(upd), epsilon=self.epsilon, agents=totals[T["agents"]])
        if evaluation is None and not force and now - self.last_row_time < self.console.status_every:
            return
        t_last, u_last, m_last, td_last = self.last
        dt = max(now - t_last, 1e-12)
        du = upd - u_last
        row = {
            "seconds": now - self.t0,
            "updates": upd,
            "updates_per_s": du / dt,
            "migrated_per_s": (moved - m_last) / dt,
            "mean_abs_td": (td - td_last) / du if du > 0 else float("nan"),
            "epsilon": self.epsilon,
            "agents": totals[T["agents"]],
        }
        for k in COLUMNS[7:]:
            row[k] = (evaluation or {}).get(k, float("nan"))
        self.rows.append(row)
        self.last = (now, float(upd), float(moved), float(td))
        self.last_row_time = now
        if evaluation is not None:
            self.console.info(
                f"[{row['seconds']:7.1f}s] updates {upd:.3e} ({row['updates_per_s']:.3g}/s), migrated "
                f"{row['migrated_per_s']:.3g}/s, |TD| {row['mean_abs_td']:.3g}, eps {self.epsilon:.3f}: greedy V(start) "
                f"{row['greedy_value_start']:.6g} vs optimal {row['optimal_value_start']:.6g} "
                f"(gap {100 * row['gap_start']:.3f}%)")

    def close(self) -> None:
        self.tracker.close()

    # ------------------------------------------------------------------ checkpoint state
    def state(self, totals: np.ndarray) -> dict[str, float]:
        """Agreed (identical on every rank) monitor state for a checkpoint's meta."""
        return {"next_eval": int(self.next_eval), "elapsed": float(totals[T["elapsed"]]) / self.size}

    def rows_array(self) -> np.ndarray | None:
        """Metric rows as an (n, len(COLUMNS)) array (rank 0), or None."""
        if not self.rows:
            return None
        return np.array([[r[k] for k in COLUMNS] for r in self.rows], dtype=np.float64)

    def window(self) -> np.ndarray:
        """The start of the next metric row's window: (seconds, updates, moved, abs_td) (rank 0's matter)."""
        t_last, updates, moved, abs_td = self.last
        return np.array([t_last - self.t0, updates, moved, abs_td], dtype=np.float64)

    def load_state(self, state: dict[str, float], totals: np.ndarray, rows: np.ndarray | None,
                   window: np.ndarray | None = None) -> None:
        """Carry on from a checkpoint: evaluation cursor, elapsed time (time budget), metric rows and the
        next row's window (``window()``; without it the window starts at the checkpoint's totals)."""
        self.next_eval = int(state["next_eval"])
        self.t0 -= float(state["elapsed"])
        if window is None:
            window = np.array([time.perf_counter() - self.t0, totals[T["updates"]], totals[T["moved"]],
                               totals[T["abs_td"]]])
        self.last = (self.t0 + float(window[0]), float(window[1]), float(window[2]), float(window[3]))
        if rows is not None and self.console.enabled:
            self.rows = [dict(zip(COLUMNS, (float(x) for x in r))) for r in np.atleast_2d(rows)]

    def history(self) -> dict[str, np.ndarray]:
        """Metric columns as arrays (rank 0; empty elsewhere)."""
        return {k: np.array([r[k] for r in self.rows], dtype=np.float64) for k in COLUMNS} if self.rows else {}

    def write(self, out_dir: Path, title: str, plots: bool) -> list[Path]:
        """metrics.csv and learning_curve.png in ``out_dir`` (rank 0)."""
        if not self.console.enabled or not self.rows:
            return []
        path = out_dir / "metrics.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: f"{r[k]:.10g}" for k in COLUMNS})
        out = [path]
        evals = [r for r in self.rows if not math.isnan(r["greedy_value_start"])]
        if plots and evals:
            from hpcql.plots import line_plot

            x = np.array([r["updates"] for r in evals])
            out.append(line_plot(
                x, {"greedy policy V(start)": np.array([r["greedy_value_start"] for r in evals])},
                out_dir / "learning_curve.png", "Q updates (all ranks)", "value at start state", title=title,
                reference={"optimal V*(start)": np.array([r["optimal_value_start"] for r in evals])}))
        return out
