"""Collective HDF5 writing and reading of row-sharded global arrays.

Each dataset is one global array sharded along axis 0 by ``offsets``. With
h5py built against parallel HDF5 every rank writes its slice collectively
(``driver="mpio"``); otherwise ranks take turns appending their slice, so no
rank ever holds more than its own rows. Files are written under a temporary
name, fsynced and renamed by rank 0: readers see the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from mpi4py import MPI

PARALLEL_HDF5 = bool(h5py.get_config().mpi)
DATA_DIGEST = "data_sha256"
"""Attribute of an unfiltered per-rank dataset written under mpio: the SHA-256 of its bytes."""


def data_digest(values: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), as stored in ``DATA_DIGEST``."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def damaged_dataset(f: h5py.File) -> str | None:
    """Read every dataset of ``f``: the first whose ``DATA_DIGEST`` does not match, as a reason, else None.

    Fletcher32 is checked on every chunk read (a mismatch raises ``OSError``).
    """
    damaged: list[str] = []

    def read(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.size:
            values = obj[()]
            if DATA_DIGEST in obj.attrs and obj.attrs[DATA_DIGEST] != data_digest(values):
                damaged.append(name)

    f.visititems(read)
    return f"dataset '{damaged[0]}' damaged (its SHA-256 digest does not match)" if damaged else None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHUNK_BYTES = 8 << 20  # large chunks: checksummed datasets stream near disk speed


def _chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Row-block chunks of about ``CHUNK_BYTES`` for a row-sharded dataset."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = int(min(shape[0], max(1, CHUNK_BYTES // row_bytes)))
    return (rows,) + tuple(shape[1:])


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = value


def _write_collective(dset: h5py.Dataset, row_start: int, rows: np.ndarray) -> None:
    """Write ``rows`` at ``row_start`` of ``dset`` in one collective H5Dwrite that every rank calls.

    A rank with no rows selects nothing but still calls (h5py's high-level setitem skips empty
    writes, which would hang the others); the data must not need a type conversion, or HDF5 falls
    back to independent I/O, which filtered datasets refuse.
    """
    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
    fspace = dset.id.get_space()
    rows = np.ascontiguousarray(rows, dtype=dset.dtype)
    if rows.size:
        fspace.select_hyperslab((row_start,) + (0,) * (rows.ndim - 1), rows.shape)
        mspace = h5py.h5s.create_simple(rows.shape)
    else:
        fspace.select_none()
        rows = np.zeros(1, dtype=dset.dtype)
        mspace = h5py.h5s.create_simple((1,))
        mspace.select_none()
    dset.id.write(mspace, fspace, rows, dxpl=dxpl)


def write_sharded(
    path: str | os.PathLike,
    comm: MPI.Comm,
    offsets: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    replicated: Mapping[str, np.ndarray] | None = None,
    checksum: bool = False,
    tmp_suffix: str = ".tmp",
    per_rank: Mapping[str, np.ndarray] | None = None,
    final_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write ``arrays`` (this rank's rows of each global array) to ``path`` atomically.

    ``replicated`` datasets are identical on all ranks and written by rank 0.
    ``per_rank`` datasets belong to one rank each and land at
    ``per_rank/<rank>/<name>``. ``final_attrs`` are set after all data is written
    (e.g. a ``complete`` marker).
    ``checksum`` adds the Fletcher32 filter (chunked datasets) for integrity checks. Under
    parallel HDF5, which writes filtered datasets only collectively, the sharded and replicated
    datasets are written collectively (every rank takes part, with an empty selection where it
    has nothing) and keep the filter; ``per_rank`` datasets, written by their rank alone, cannot
    and carry a ``DATA_DIGEST`` attribute instead.
    Collective over ``comm``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    rank = comm.rank
    row_start, row_stop = int(offsets[rank]), int(offsets[rank + 1])
    global_rows = int(offsets[-1])
    shapes = {k: (global_rows,) + tuple(a.shape[1:]) for k, a in arrays.items()}
    collective_io = PARALLEL_HDF5 and comm.size > 1
    opts: dict[str, Any] = {"fletcher32": True} if checksum else {}
    # HDF5 refuses independent writes to filtered datasets: per-rank datasets under mpio go unfiltered.
    own_opts = {} if collective_io else opts
    own = {k: np.ascontiguousarray(v) for k, v in (per_rank or {}).items()}
    layouts = comm.allgather({k: (v.shape, v.dtype.str, data_digest(v) if collective_io and checksum else None)
                              for k, v in own.items()})

    def create(f: h5py.File) -> None:
        _set_attrs(f, attrs)
        f.create_dataset("shard_offsets", data=np.asarray(offsets, dtype=np.int64))
        for k, a in arrays.items():
            chunk_opts = dict(opts, chunks=_chunks(shapes[k], a.dtype)) if opts and int(np.prod(shapes[k])) > 0 else {}
            f.create_dataset(k, shape=shapes[k], dtype=a.dtype, **chunk_opts)
        for k, a in (replicated or {}).items():
            arr = np.asarray(a)
            chunk_opts = dict(opts, chunks=_chunks(arr.shape, arr.dtype)) if opts and arr.size and arr.ndim else {}
            if chunk_opts and collective_io:
                _write_collective(f.create_dataset(k, shape=arr.shape, dtype=arr.dtype, **chunk_opts), 0,
                                  arr if rank == 0 else arr[:0])
            else:
                f.create_dataset(k, data=arr, **chunk_opts)
        for r, layout in enumerate(layouts):
            for k, (shape, dtype, digest) in layout.items():
                chunk_opts = (dict(own_opts, chunks=_chunks(tuple(shape), np.dtype(dtype)))
                              if own_opts and int(np.prod(shape)) > 0 and len(shape) > 0 else {})
                d = f.create_dataset(f"per_rank/{r}/{k}", shape=shape, dtype=np.dtype(dtype), **chunk_opts)
                if digest is not None:  # unfiltered under mpio: a digest instead (attributes are collective)
                    d.attrs[DATA_DIGEST] = digest

    def fill(f: h5py.File) -> None:
        for k, a in arrays.items():
            if collective_io:
                if int(np.prod(shapes[k])) > 0:
                    _write_collective(f[k], row_start, a)
            elif row_stop > row_start:
                f[k][row_start:row_stop] = a
        for k, a in own.items():
            if a.size:
                f[f"per_rank/{rank}/{k}"][...] = a

    if collective_io:
        with h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
            create(f)
            fill(f)
            _set_attrs(f, final_attrs or {})
    else:
        if rank == 0:
            with h5py.File(tmp, "w") as f:
                create(f)
        for turn in range(comm.size):
            comm.Barrier()
            if turn == rank:
                with h5py.File(tmp, "r+") as f:
                    fill(f)
        comm.Barrier()
        if rank == 0 and final_attrs:
            with h5py.File(tmp, "r+") as f:
                _set_attrs(f, final_attrs)
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
