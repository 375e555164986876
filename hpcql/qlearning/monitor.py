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
from hpcql.qlearning.learner import COUNTERS
from hpcql.qlearning.schedules import epsilon_at

TOTALS = COUNTERS + ("agents", "elapsed", "out_of_time")
T = {name: i for i, name in enumerate(TOTALS)}
COLUMNS = ("seconds", "updates", "updates_per_s", "migrated_per_s", "mean_abs_td", "epsilon", "agents",
           "greedy_value_start", "optimal_value_start", "gap_start", "mean_gap")


class Monitor:
    """Decides stop / evaluation points and records metric rows."""

    def __init__(self, algo: QLearningAlgo, comm_size: int, console: Console, t0: float) -> None:
        self.algo = algo
        self.size = comm_size
        self.console = console
        self.t0 = t0
        self.next_eval = 1
        self.rows: list[dict[str, float]] = []
        self.last = (t0, 0.0, 0.0, 0.0, 0.0)  # time, updates, moved, abs_td sum
        self.last_row_time = t0
        self.tracker = console.tracker("updates", total=algo.budget_updates or None)
        self.epsilon = algo.epsilon_start

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
        a = self.algo
        return bool((a.budget_updates and totals[T["updates"]] >= a.budget_updates) or totals[T["out_of_time"]] > 0)

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
        t_last, u_last, m_last, td_last, _ = self.last
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
        self.last = (now, upd, moved, td, 0.0)
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

    def load_state(self, state: dict[str, float], totals: np.ndarray, rows: np.ndarray | None) -> None:
        """Carry on from a checkpoint: evaluation cursor, elapsed time (time budget), metric rows."""
        self.next_eval = int(state["next_eval"])
        self.t0 -= float(state["elapsed"])
        now = time.perf_counter()
        self.last = (now, totals[T["updates"]], totals[T["moved"]], totals[T["abs_td"]], 0.0)
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
