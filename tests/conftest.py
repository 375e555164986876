"""Shared test helpers: launching hpcql (or a script) under mpiexec with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else "mpiexec"
REPO = Path(__file__).resolve().parents[1]


def mpirun(args: list[str], ranks: int, timeout: float = 120, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` on ``ranks`` MPI ranks; a hang fails the test at ``timeout``."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s (deadlock?): {' '.join(cmd)}\n{exc.stdout}\n{exc.stderr}")


def hpcql(args: list[str], ranks: int = 1, timeout: float = 120, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``hpcql ARGS`` under mpiexec."""
    return mpirun(["-m", "hpcql", *args], ranks, timeout, cwd, env)


def set_args(overrides: dict[str, object]) -> list[str]:
    """``--set key=value`` command-line arguments for ``hpcql run``."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def poison_dataset(path: Path, name: str, index: tuple[int, ...]) -> None:
    """Put a NaN at ``index`` of dataset ``name`` in checkpoint ``path``, rewritten without its digest, so
    the file still verifies (as a run that diverged before saving would)."""
    import h5py
    import numpy as np
    with h5py.File(path, "r+") as f:
        values = f[name][()]
        values[index] = np.nan
        del f[name]
        f.create_dataset(name, data=values)
