"""A latency-bandwidth (alpha-beta) model fitted to the measured communication, projected
to rank counts we cannot run here. Everything it writes is labelled a projection.

Per iteration of a bulk-synchronous sweep on P ranks with N states (n = N/P per rank):

    T(P) = c*n + m(P)*alpha + bytes(P)*beta + L(P)*(alpha + 8*beta),   L(P) = ceil(log2 P)
    E(P) = c*n / T(P)

- ``c``: compute seconds per state per iteration (measured compute phase, max over ranks);
- halo exchange: ``m(P)`` messages of ``bytes(P)`` bytes in all per rank. Gridworld with
  contiguous row-major blocks: the ghosts are one grid row on each side,
  m = s*ceil(cols/n) neighbours, bytes = s*cols*8 with s = 2(P-1)/P sides on average (float64 values); a random MDP with
  uniform successors is all-to-all: m = P-1, bytes = 8*min(N-n, n*A*successors);
- the residual allreduce: recursive doubling, L(P) steps of one float64 each.

alpha and beta are fitted by non-negative least squares to the per-iteration exchange
and reduce times of every run with P > 1 (the rank that spent least time in them, so
load imbalance counts as little as possible). On one machine these are shared-memory
numbers; pass the interconnect's own (e.g. from OSU micro-benchmarks) with --alpha/--beta.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hpcql.scaling.runner import RunRecord

FORMULA = ("T(P) = c*N/P + m(P)*alpha + bytes(P)*beta + ceil(log2 P)*(alpha + 8*beta);  "
           "E(P) = (c*N/P) / T(P)")


def halo(problem: dict, states: float, ranks: float) -> tuple[float, float]:
    """(messages, bytes) one rank sends per iteration in the halo exchange."""
    if ranks <= 1:
        return 0.0, 0.0
    n = states / ranks
    if problem.get("kind") == "random":
        ghosts = min(states - n, n * problem.get("actions", 4) * problem.get("successors", 8))
        return ranks - 1, 8.0 * ghosts
    # gridworld (and the default for grid-like, banded models): one row of ghosts each side
    cols = problem.get("cols") or math.sqrt(states)
    if problem.get("rows") and problem.get("cols") and states != problem["rows"] * problem["cols"]:
        cols = math.sqrt(states)  # a projected size: assume a square grid
    sides = 2.0 * (ranks - 1) / ranks  # the two end ranks have one neighbour block only
    return sides * math.ceil(cols / max(n, 1.0)), sides * 8.0 * cols


def reduce_steps(ranks: float) -> float:
    return float(math.ceil(math.log2(ranks))) if ranks > 1 else 0.0


def fit(records: list["RunRecord"]) -> dict:
    """Fit alpha, beta (NNLS) and c from the measured runs."""
    from scipy.optimize import nnls

    rows, rhs, c_values = [], [], []
    for r in records:
        it = max(r.iterations, 1)
        n = r.states / r.ranks
        compute = r.phases.get("compute", {}).get("max", 0.0)
        if n > 0 and compute > 0:
            c_values.append(compute / it / n)
        if r.ranks < 2:
            continue
        msgs, nbytes = halo(r.problem, r.states, r.ranks)
        t_ex = r.phases.get("exchange", {}).get("min", 0.0) / it
        t_red = r.phases.get("reduce", {}).get("min", 0.0) / it
        L = reduce_steps(r.ranks)
        rows += [[msgs, nbytes], [L, 8.0 * L]]
        rhs += [t_ex, t_red]
    out = {"c_seconds_per_state": float(np.median(c_values)) if c_values else None, "observations": len(rhs)}
    if not rows:
        out.update(alpha_seconds=None, beta_seconds_per_byte=None)
        return out
    a = np.array(rows, dtype=float)
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)
    sol, resid = nnls(a / scale, np.array(rhs))
    alpha, beta = sol / scale
    out.update(alpha_seconds=float(alpha), beta_seconds_per_byte=float(beta), residual_norm=float(resid))
    return out


def project(params: dict, problem: dict, states: float, ranks: float) -> dict:
    """Modelled per-iteration times and efficiency at (states, ranks)."""
    c, alpha, beta = params["c_seconds_per_state"], params["alpha_seconds"], params["beta_seconds_per_byte"]
    n = states / ranks
    msgs, nbytes = halo(problem, states, ranks)
    L = reduce_steps(ranks)
    t_comp = c * n
    t_ex = msgs * alpha + nbytes * beta
    t_red = L * (alpha + 8.0 * beta)
    total = t_comp + t_ex + t_red
    return {"states": states, "ranks": ranks, "compute_s": t_comp, "exchange_s": t_ex, "reduce_s": t_red,
            "iteration_s": total, "efficiency": t_comp / total if total > 0 else 1.0}


def write_projection(records: list["RunRecord"], rows: list[dict], out: Path, mode: str,
                     states: list[float], ranks: list[float], alpha: float | None = None,
                     beta: float | None = None) -> Path:
    """projection.json and projection.md beside the measurements."""
    params = fit(records)
    if alpha is not None:
        params["alpha_seconds"], params["alpha_source"] = alpha, "given (--alpha)"
    if beta is not None:
        params["beta_seconds_per_byte"], params["beta_source"] = beta, "given (--beta)"
    problem = dict(records[-1].problem) if records else {}
    md = ["# PROJECTION (model, not measured)", "",
          "Latency-bandwidth (alpha-beta) model fitted to the measured exchange and allreduce times "
          f"of this {mode}-scaling study ({len(records)} runs; see scaling.md for the measurements).", "",
          f"    {FORMULA}", "",
          "m(P), bytes(P): halo messages and bytes per rank and iteration "
          f"({'all-to-all, random MDP' if problem.get('kind') == 'random' else 'one grid row each side, square grid of N states'}); "
          "ceil(log2 P) allreduce steps (recursive doubling).", ""]
    result: dict = {"label": "projection (alpha-beta model), not a measurement", "formula": FORMULA,
                    "parameters": params, "problem_kind": problem.get("kind"), "strong": [], "weak": []}
    ready = all(params.get(k) is not None for k in ("c_seconds_per_state", "alpha_seconds", "beta_seconds_per_byte"))
    if not ready:
        md.append("Not enough data to fit: the model needs at least one measured run with 2 or more ranks "
                  "(or give --alpha and --beta).")
    else:
        md += ["Fitted parameters:", "",
               f"- c = {params['c_seconds_per_state']:.3e} s per state per iteration (compute)",
               f"- alpha = {params['alpha_seconds']:.3e} s per message "
               f"({params.get('alpha_source', 'fitted')})",
               f"- beta = {params['beta_seconds_per_byte']:.3e} s per byte "
               f"({params.get('beta_source', 'fitted')}; 1/beta = "
               f"{(1 / params['beta_seconds_per_byte'] / 1e9) if params['beta_seconds_per_byte'] else float('inf'):.3g} GB/s)",
               ""]
        md += ["## Strong scaling (fixed N): projected efficiency", "",
               "| N states | " + " | ".join(f"P={int(p)}" for p in ranks) + " |",
               "|---:|" + "---:|" * len(ranks)]
        for s in states:
            pts = [project(params, problem, s, p) for p in ranks]
            result["strong"] += pts
            md.append(f"| {s:.0e} | " + " | ".join(f"{100 * x['efficiency']:.1f}%" for x in pts) + " |")
        n_rank = rows[-1]["states_per_rank"] if rows else 0
        if n_rank:
            pts = [project(params, problem, n_rank * p, p) for p in ranks]
            result["weak"] = pts
            md += ["", f"## Weak scaling ({n_rank:,.0f} states per rank, as measured): projected efficiency", "",
                   "| P | " + " | ".join(str(int(p)) for p in ranks) + " |", "|---|" + "---:|" * len(ranks),
                   "| efficiency | " + " | ".join(f"{100 * x['efficiency']:.1f}%" for x in pts) + " |"]
        md += ["", "Caveats: fitted on one machine (shared memory, oversubscribed cores), so alpha and beta "
               "describe that machine, not an interconnect; network contention, OS noise and load imbalance "
               "at scale are not modelled."]
    (out / "projection.json").write_text(json.dumps(result, indent=2))
    (out / "projection.md").write_text("\n".join(md) + "\n")
    return out / "projection.md"
