"""Collective HDF5 writing and reading of row-sharded global arrays.

Each dataset is one global array sharded along axis 0 by ``offsets``. With
h5py built against parallel HDF5 every rank writes its slice collectively
(``driver="mpio"``); otherwise ranks take turns appending their slice, so no
rank ever holds more than its own rows. Files are written under a temporary
name, fsynced and renamed by rank 0: readers see the old file or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from mpi4py import MPI

PARALLEL_HDF5 = bool(h5py.get_config().mpi)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = value


def write_sharded(
    path: str | os.PathLike,
    comm: MPI.Comm,
    offsets: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    replicated: Mapping[str, np.ndarray] | None = None,
    checksum: bool = False,
    tmp_suffix: str = ".tmp",
) -> None:
    """Write ``arrays`` (this rank's rows of each global array) to ``path`` atomically.

    ``replicated`` datasets are identical on all ranks and written by rank 0.
    ``checksum`` adds the Fletcher32 filter (chunked datasets) for integrity checks.
    Collective over ``comm``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    rank = comm.rank
    row_start, row_stop = int(offsets[rank]), int(offsets[rank + 1])
    global_rows = int(offsets[-1])
    shapes = {k: (global_rows,) + tuple(a.shape[1:]) for k, a in arrays.items()}
    opts: dict[str, Any] = {"fletcher32": True, "chunks": True} if checksum else {}

    def create(f: h5py.File) -> None:
        _set_attrs(f, attrs)
        f.create_dataset("shard_offsets", data=np.asarray(offsets, dtype=np.int64))
        for k, a in arrays.items():
            chunk_opts = dict(opts) if int(np.prod(shapes[k])) > 0 else {}
            f.create_dataset(k, shape=shapes[k], dtype=a.dtype, **chunk_opts)
        for k, a in (replicated or {}).items():
            chunk_opts = dict(opts) if np.asarray(a).size > 0 else {}
            f.create_dataset(k, data=np.asarray(a), **chunk_opts)

    if PARALLEL_HDF5 and comm.size > 1:
        with h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
            create(f)
            for k, a in arrays.items():
                with f[k].collective:
                    f[k][row_start:row_stop] = a
    else:
        if rank == 0:
            with h5py.File(tmp, "w") as f:
                create(f)
        for turn in range(comm.size):
            comm.Barrier()
            if turn == rank and row_stop > row_start:
                with h5py.File(tmp, "r+") as f:
                    for k, a in arrays.items():
                        f[k][row_start:row_stop] = a
    comm.Barrier()
    if rank == 0:
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    comm.Barrier()


def read_rows(path: str | os.PathLike, name: str, row_start: int, row_stop: int) -> np.ndarray:
    """Rows ``row_start:row_stop`` of a dataset (each rank reads only its own)."""
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][row_start:row_stop])
