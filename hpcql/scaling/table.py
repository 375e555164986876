"""Scaling tables (CSV, Markdown) and plots from the measured runs.

Per rank count the median over repeats is reported. Phase times are the max
over ranks (the critical path) of each run, then the median over repeats.
Efficiency: strong scaling ``T(k0) * k0 / (T(k) * k)`` on wall time; weak scaling
``t(k0) / t(k)`` on time per iteration (a bigger problem may need more
iterations, which is the algorithm, not the parallel efficiency).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hpcql.scaling.runner import RunRecord

PHASES = ("compute", "exchange", "reduce", "wait", "io")


def _phase(rec: "RunRecord", name: str, stat: str = "max") -> float:
    return float(rec.phases.get(name, {}).get(stat, 0.0))


def summarize(records: list["RunRecord"], mode: str) -> list[dict]:
    """One row per rank count: times, speedup, efficiency and phase breakdown."""
    by_ranks: dict[int, list] = {}
    for rec in records:
        by_ranks.setdefault(rec.ranks, []).append(rec)
    rows = []
    for k in sorted(by_ranks):
        recs = by_ranks[k]
        walls = [r.wall_seconds for r in recs]
        iters = statistics.median(r.iterations for r in recs)
        row = {
            "ranks": k, "states": recs[0].states, "states_per_rank": recs[0].states / k if recs[0].states else 0,
            "runs": len(recs), "iterations": iters,
            "wall_median_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
            "time_per_iteration_s": statistics.median(r.wall_seconds / max(r.iterations, 1) for r in recs),
        }
        for p in PHASES:
            row[f"{p}_s"] = statistics.median(_phase(r, p) for r in recs)
        rows.append(row)
    base = rows[0]
    for row in rows:
        k, k0 = row["ranks"], base["ranks"]
        if mode == "strong":
            row["speedup"] = base["wall_median_s"] / row["wall_median_s"]
            row["ideal_speedup"] = k / k0
            row["efficiency"] = row["speedup"] / row["ideal_speedup"]
        else:  # weak: scaled speedup on time per iteration
            ratio = base["time_per_iteration_s"] / row["time_per_iteration_s"]
            row["speedup"] = ratio * k / k0
            row["ideal_speedup"] = k / k0
            row["efficiency"] = ratio
    return rows


CSV_COLUMNS = ["ranks", "states", "states_per_rank", "runs", "iterations", "wall_median_s", "wall_min_s",
               "wall_max_s", "time_per_iteration_s", "speedup", "ideal_speedup", "efficiency"] + \
              [f"{p}_s" for p in PHASES]


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in CSV_COLUMNS})
    return path


def write_runs_csv(records: list["RunRecord"], path: Path) -> Path:
    """Every run, unaggregated (max and mean over ranks of each phase)."""
    cols = ["ranks", "repeat", "states", "wall_seconds", "iterations"] + \
           [f"{p}_{s}_s" for p in PHASES for s in ("max", "mean")] + ["out_dir"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            w.writerow([r.ranks, r.repeat, r.states, f"{r.wall_seconds:.6g}", r.iterations]
                       + [f"{_phase(r, p, s):.6g}" for p in PHASES for s in ("max", "mean")] + [r.out_dir])
    return path


def markdown(rows: list[dict], mode: str, title: str) -> str:
    """The table people read: time, speedup, efficiency, then where the time goes."""
    metric = "wall time" if mode == "strong" else "time per iteration"
    lines = [f"# {title}", "",
             f"Measured; median of {rows[0]['runs']} run(s) per rank count. Efficiency from {metric} "
             f"relative to {rows[0]['ranks']} rank(s).", "",
             "| ranks | states | iterations | wall (s) | s/iteration | speedup | ideal | efficiency |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['ranks']} | {r['states']:,} | {r['iterations']:g} | {r['wall_median_s']:.3f} | "
                     f"{r['time_per_iteration_s']:.3g} | {r['speedup']:.2f} | {r['ideal_speedup']:.0f} | "
                     f"{100 * r['efficiency']:.1f}% |")
    lines += ["", "Phase breakdown (seconds, max over ranks; share of the wall time):", "",
              "| ranks | " + " | ".join(PHASES) + " |", "|---:|" + "---:|" * len(PHASES)]
    for r in rows:
        cells = [f"{r[f'{p}_s']:.3f} ({100 * r[f'{p}_s'] / max(r['wall_median_s'], 1e-12):.0f}%)" for p in PHASES]
        lines.append(f"| {r['ranks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def phase_plot(rows: list[dict], path: Path, title: str) -> Path:
    """Stacked bars: where the time goes at each rank count."""
    from hpcql.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for p in PHASES:
        vals = np.array([r[f"{p}_s"] for r in rows])
        if vals.any():
            ax.bar(x, vals, bottom=bottom, label=p)
            bottom += vals
    ax.plot(x, [r["wall_median_s"] for r in rows], "k_", markersize=30, label="wall (median)")
    ax.set_xticks(x, [str(r["ranks"]) for r in rows])
    ax.set_xlabel("ranks")
    ax.set_ylabel("seconds (max over ranks)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(records: list["RunRecord"], rows: list[dict], out: Path, mode: str, title: str) -> None:
    """scaling.csv, scaling-runs.csv, scaling.md, speedup.png, efficiency.png, phases.png."""
    from hpcql.plots import line_plot

    write_csv(rows, out / "scaling.csv")
    write_runs_csv(records, out / "scaling-runs.csv")
    (out / "scaling.md").write_text(markdown(rows, mode, title))
    ranks = np.array([r["ranks"] for r in rows], dtype=float)
    label = "speedup" if mode == "strong" else "scaled speedup"
    line_plot(ranks, {label: np.array([r["speedup"] for r in rows])}, out / "speedup.png", "ranks", label,
              title=f"{title}: {label}", reference={"ideal": np.array([r["ideal_speedup"] for r in rows])})
    line_plot(ranks, {"efficiency": np.array([r["efficiency"] for r in rows])}, out / "efficiency.png", "ranks",
              "parallel efficiency", title=f"{title}: efficiency", reference={"ideal": np.ones(len(rows))})
    phase_plot(rows, out / "phases.png", f"{title}: phase breakdown")
