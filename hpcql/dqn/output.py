"""DQN outputs on rank 0: learning-curve CSV and PNG, and ``result.h5`` (written atomically)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from hpcql.dqn.loop import CURVE_COLUMNS


def write_curve_csv(path: Path, curve: list[dict[str, float]]) -> Path:
    """One row per evaluation with the ``CURVE_COLUMNS``."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CURVE_COLUMNS))
        w.writeheader()
        for point in curve:
            w.writerow({k: point[k] for k in CURVE_COLUMNS})
    return path


def plot_curve(path: Path, curve: list[dict[str, float]], title: str, target: float | None) -> Path:
    """Eval and training return against global env steps."""
    from hpcql.plots import line_plot

    x = np.array([p["env_steps"] for p in curve], dtype=float)
    ys = {"greedy eval return (mean)": np.array([p["eval_return_mean"] for p in curve]),
          "training episodes (mean)": np.array([p["train_return_mean"] for p in curve])}
    ref = {f"target {target:g}": np.full_like(x, target)} if target is not None else None
    return line_plot(x, ys, path, xlabel="env steps (all ranks)", ylabel="episode return", title=title,
                     reference=ref)


def write_result(path: Path, params: Mapping[str, np.ndarray], eval_returns: list[np.ndarray],
                 curve: list[dict[str, float]], attrs: Mapping[str, Any]) -> Path:
    """``params/<name>`` (final network), ``eval/returns`` (evals x episodes), ``eval/env_steps``,
    ``curve/<column>``; temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
        for name, a in params.items():
            f.create_dataset(f"params/{name}", data=a)
        f.create_dataset("eval/returns", data=np.array(eval_returns, dtype=np.float64))
        f.create_dataset("eval/env_steps", data=np.array([p["env_steps"] for p in curve], dtype=np.int64))
        for col in CURVE_COLUMNS:
            f.create_dataset(f"curve/{col}", data=np.array([p[col] for p in curve], dtype=np.float64))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
