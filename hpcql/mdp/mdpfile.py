"""The "hpcql-mdp" HDF5 format (version 1): writer and per-rank row reader.

Layout (SPEC): root attributes ``format``, ``version``, ``num_states``,
``num_actions``, optional ``discount``; ``/transitions/{indptr,indices,probs}``
in state-major CSR (row ``s*A + a``) and ``/rewards`` (S, A).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from hpcql.comm import collective
from hpcql.errors import BadInput
from hpcql.mdp.shard import MdpShard, validate_rows
from hpcql.partition import weighted_partition

FORMAT = "hpcql-mdp"
VERSION = 1


def write_mdp(
    path: str | os.PathLike,
    indptr: np.ndarray,
    indices: np.ndarray,
    probs: np.ndarray,
    rewards: np.ndarray,
    discount: float | None = None,
) -> None:
    """Write a whole MDP (single process) in the hpcql-mdp format, atomically."""
    rewards = np.asarray(rewards, dtype=np.float64)
    S, A = rewards.shape
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["num_states"] = S
        f.attrs["num_actions"] = A
        if discount is not None:
            f.attrs["discount"] = float(discount)
        g = f.create_group("transitions")
        g.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        idx = np.asarray(indices)
        g.create_dataset("indices", data=idx if idx.dtype in (np.int32, np.int64) else idx.astype(np.int64))
        g.create_dataset("probs", data=np.asarray(probs, dtype=np.float64))
        f.create_dataset("rewards", data=rewards)
    os.replace(tmp, path)


@dataclass(frozen=True)
class MdpHeader:
    num_states: int
    num_actions: int
    nnz: int
    discount: float | None


def _fail(path: str, what: str) -> BadInput:
    return BadInput(f"{path}: {what}")


def _scalar_attr(f: h5py.File, path: str, key: str, kinds: str, expected: str) -> Any:
    """Attribute ``key`` as a Python scalar when it is one of numpy ``kinds`` ('i', 'u', 'f'), else BadInput."""
    value = f.attrs[key]
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in kinds:
        raise _fail(path, f"attribute '{key}' is {arr.tolist()!r}, expected {expected}")
    return arr.item()


def read_header(path: str) -> MdpHeader:
    """Check the file's attributes and dataset shapes (no row data read)."""
    if not Path(path).is_file():
        raise _fail(path, "MDP file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _fail(path, f"not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise _fail(path, f"attribute 'format' is {f.attrs.get('format')!r}, expected {FORMAT!r}")
        if "version" not in f.attrs or _scalar_attr(f, path, "version", "iu", str(VERSION)) != VERSION:
            raise _fail(path, f"attribute 'version' is {f.attrs.get('version')!r}, expected {VERSION}")
        for key in ("num_states", "num_actions"):
            if key not in f.attrs or _scalar_attr(f, path, key, "iu", "an integer >= 1") < 1:
                raise _fail(path, f"attribute '{key}' missing or < 1")
        S, A = int(f.attrs["num_states"]), int(f.attrs["num_actions"])
        for name in ("transitions/indptr", "transitions/indices", "transitions/probs", "rewards"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise _fail(path, f"dataset '/{name}' missing")
        ip, ix, pr, rw = (f[n] for n in ("transitions/indptr", "transitions/indices", "transitions/probs", "rewards"))
        if ip.shape != (S * A + 1,) or ip.dtype.kind not in "iu":
            raise _fail(path, f"dataset '/transitions/indptr' has shape {ip.shape} {ip.dtype}, expected ({S * A + 1},) int64")
        if ix.ndim != 1 or ix.dtype.kind not in "iu":
            raise _fail(path, f"dataset '/transitions/indices' has shape {ix.shape} {ix.dtype}, expected 1-D int32/int64")
        if pr.ndim != 1 or pr.dtype.kind != "f":
            raise _fail(path, f"dataset '/transitions/probs' has shape {pr.shape} {pr.dtype}, expected 1-D float64")
        if ix.shape != pr.shape:
            raise _fail(path, f"datasets '/transitions/indices' {ix.shape} and '/transitions/probs' {pr.shape} differ in length")
        if rw.shape != (S, A) or rw.dtype.kind != "f":
            raise _fail(path, f"dataset '/rewards' has shape {rw.shape} {rw.dtype}, expected ({S}, {A}) float64")
        first, last = int(ip[0]), int(ip[-1])
        if first != 0 or last != ix.shape[0]:
            raise _fail(path, f"dataset '/transitions/indptr' must start at 0 and end at nnz={ix.shape[0]} (got {first}..{last})")
        discount = (float(_scalar_attr(f, path, "discount", "iuf", "a number in (0, 1)"))
                    if "discount" in f.attrs else None)
        if discount is not None and not 0 < discount < 1:
            raise _fail(path, f"attribute 'discount' is {discount}, expected 0 < discount < 1")
    return MdpHeader(S, A, ix.shape[0], discount)


def _as_int64(raw: np.ndarray, path: str, name: str) -> np.ndarray:
    """``raw`` as int64; an unsigned value beyond int64 is bad input (a cast would print it negative)."""
    if raw.dtype.kind == "u" and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
        raise _fail(path, f"dataset '/{name}': value {int(raw.max())} is too large")
    return np.asarray(raw, dtype=np.int64)


def read_state_nnz_cumulative(path: str, header: MdpHeader) -> np.ndarray:
    """Cumulative transition entries at state boundaries: ``indptr[::A]`` (S+1 values)."""
    with h5py.File(path, "r") as f:
        return _as_int64(f["transitions/indptr"][:: header.num_actions], path, "transitions/indptr")


def read_rows(path: str, header: MdpHeader, row_start: int, row_stop: int) -> MdpShard:
    """Read only the rows of states ``row_start:row_stop``."""
    A = header.num_actions
    with h5py.File(path, "r") as f:
        indptr = _as_int64(f["transitions/indptr"][row_start * A: row_stop * A + 1], path, "transitions/indptr")
        if np.any(np.diff(indptr) < 0):
            bad = row_start * A + int(np.flatnonzero(np.diff(indptr) < 0)[0])
            raise _fail(path, f"dataset '/transitions/indptr' decreases at row {bad}")
        lo, hi = int(indptr[0]), int(indptr[-1])
        indices = _as_int64(f["transitions/indices"][lo:hi], path, "transitions/indices")
        probs = np.asarray(f["transitions/probs"][lo:hi], dtype=np.float64)
        rewards = np.asarray(f["rewards"][row_start:row_stop], dtype=np.float64)
    if not np.all(np.isfinite(rewards)):
        s = row_start + int(np.flatnonzero(~np.isfinite(rewards).all(axis=1))[0])
        raise _fail(path, f"dataset '/rewards': non-finite reward at state {s}")
    return MdpShard(header.num_states, A, row_start, row_stop, indptr - lo, indices, probs, rewards, header.discount)


def read_mdp_shard(path: str, comm: MPI.Comm) -> tuple[MdpShard, np.ndarray]:
    """Collectively read an MDP file: each rank gets its nnz-balanced rows.

    Invalid files raise ``BadInput`` on every rank naming the first bad row or dataset.
    """
    header = collective(comm, lambda: read_header(path))
    offsets = collective(comm, lambda: weighted_partition(read_state_nnz_cumulative(path, header), comm.size))
    shard = collective(comm, lambda: read_rows(path, header, int(offsets[comm.rank]), int(offsets[comm.rank + 1])))
    problems = [p for p in comm.allgather(validate_rows(shard)) if p is not None]
    if problems:
        raise BadInput(f"{path}: {min(problems)[1]}", agreed=True)
    return shard, offsets
