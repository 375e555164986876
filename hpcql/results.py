"""The result file ``<out_dir>/result.h5`` (SPEC "Result file")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from mpi4py import MPI

from hpcql import __version__
from hpcql.config import Config
from hpcql.h5io import write_sharded

RESULT_FORMAT = "hpcql-result"


def result_path(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / "result.h5"


def common_attrs(cfg: Config, comm: MPI.Comm, wall_seconds: float, phases: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes every result file carries, whatever the engine."""
    return {
        "format": RESULT_FORMAT,
        "version": 1,
        "hpcql_version": __version__,
        "algo": cfg.algo.name,
        "mode": cfg.algo.mode,
        "ranks": comm.size,
        "wall_seconds": float(wall_seconds),
        "env_kind": cfg.env.kind,
        "config_json": json.dumps(cfg.model_dump(mode="json")),
        "phase_seconds_json": json.dumps(phases),
    }


def write_tabular_result(
    cfg: Config,
    comm: MPI.Comm,
    offsets: np.ndarray,
    q: np.ndarray,
    v: np.ndarray,
    policy: np.ndarray,
    attrs: Mapping[str, Any],
    history: Mapping[str, np.ndarray],
) -> Path:
    """Write Q (S, A), V (S,), policy (S,) and attributes (collective)."""
    path = result_path(cfg)
    write_sharded(path, comm, offsets, {"Q": q, "V": v, "policy": policy.astype(np.int64)}, attrs,
                  replicated={f"history/{k}": np.asarray(a) for k, a in history.items()})
    return path
