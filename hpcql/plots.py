"""Figures people would rather look at: value heatmaps, learning and scaling curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ARROWS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=float)  # up, right, down, left as (dx, dy)


def value_heatmap(v: np.ndarray, policy: np.ndarray, grid_shape: tuple[int, int], path: Path,
                  title: str = "", max_arrows: int = 32) -> Path:
    """Heatmap of V over the grid with greedy-policy arrows on a coarse subsample."""
    rows, cols = grid_shape
    values = v[: rows * cols].reshape(rows, cols)
    fig, ax = plt.subplots(figsize=(7, 6 * rows / max(cols, 1) + 0.5))
    im = ax.imshow(values, cmap="viridis", interpolation="nearest", origin="upper")
    fig.colorbar(im, ax=ax, label="V(s)")
    step_r, step_c = max(1, rows // max_arrows), max(1, cols // max_arrows)
    rr, cc = np.mgrid[step_r // 2: rows: step_r, step_c // 2: cols: step_c]
    acts = policy[: rows * cols].reshape(rows, cols)[rr, cc]
    d = ARROWS[acts]
    ax.quiver(cc, rr, d[..., 0], d[..., 1], color="white", scale=max(rows, cols) / min(step_r, step_c) * 1.6,
              width=0.003, pivot="middle")
    ax.set_title(title or f"V and greedy policy ({rows}x{cols})")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def line_plot(x: np.ndarray, ys: dict[str, np.ndarray], path: Path, xlabel: str, ylabel: str,
              title: str = "", logy: bool = False, reference: dict[str, np.ndarray] | None = None) -> Path:
    """A simple multi-series line plot (learning curves, convergence, scaling)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, y in ys.items():
        ax.plot(x, y, marker="o" if len(x) < 20 else None, label=label)
    for label, y in (reference or {}).items():
        ax.plot(x, y, linestyle="--", color="gray", label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
