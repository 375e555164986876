"""Checkpoints: one HDF5 file per save, atomic, checksummed, the last ``keep`` kept.

A checkpoint ``<out_dir>/checkpoints/ckpt-<step>.h5`` holds

- row-sharded global arrays (e.g. ``V``) as one dataset each, with
  ``shard_offsets`` recording the partition that wrote them, so a run under
  another rank count re-reads exactly its own rows;
- ``per_rank/<rank>/<name>`` datasets for state that belongs to one rank
  (RNG states, replay shards, agent queues);
- ``replicated/<name>`` datasets identical on all ranks;
- attributes: format, version, step, ranks, engine, hpcql version, the config
  (JSON), free-form ``meta_json``, ``attrs_sha256`` (a digest of all of these),
  and ``complete = 1`` written last.

Every dataset carries the Fletcher32 filter, so flipped bytes fail the read (under parallel
HDF5, per-rank datasets carry a SHA-256 ``data_sha256`` attribute instead);
``verify`` reads everything back and checks the attribute digest (HDF5 does not
checksum attributes). Writing goes through ``h5io.write_sharded``
(temporary name, fsync, rename), so a crash or a second signal mid-write never
damages an earlier checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from mpi4py import MPI

from hpcql import __version__
from hpcql.comm import collective
from hpcql.config import Config
from hpcql.errors import BadInput, Checkpointed
from hpcql.h5io import damaged_dataset, write_sharded

FORMAT = "hpcql-checkpoint"
NAME = re.compile(r"^ckpt-(\d{12})\.h5$")
# config sections that define the problem: a checkpoint of another problem cannot be resumed
PROBLEM_KEYS = ("env", "algo.name", "algo.gamma", "algo.variant", "run.seed")
# ... except these keys, which size a rank's share of the work as the rank count does (a DQN
# resume redistributes the replay and restarts episodes when they change)
RESOURCE_KEYS = {"env": ("num_envs",)}


def _problem_signature(config: Mapping[str, Any]) -> dict[str, Any]:
    sig = {}
    for key in PROBLEM_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in RESOURCE_KEYS:
            node = {k: v for k, v in node.items() if k not in RESOURCE_KEYS[key]}
        sig[key] = node
    return sig


DIGEST_KEY = "attrs_sha256"
HEADER_KEYS = ("format", "version", "step", "ranks", "engine", "hpcql_version", "config_json", "meta_json")


def attrs_digest(attrs: Mapping[str, Any]) -> str:
    """SHA-256 of the header attributes (``HEADER_KEYS``), as written or as read back by h5py."""
    plain = {}
    for key in HEADER_KEYS:
        value = attrs.get(key)
        value = value.item() if isinstance(value, np.generic) else value
        plain[key] = value.decode() if isinstance(value, bytes) else value
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def _header(f: h5py.File, path: Path) -> Checkpoint:
    """The parsed attributes of an open checkpoint (``KeyError`` / ``ValueError`` when damaged)."""
    return Checkpoint(path, int(f.attrs["step"]), int(f.attrs["ranks"]),
                      json.loads(f.attrs["meta_json"]), json.loads(f.attrs["config_json"]))


def verify(path: Path) -> str | None:
    """None when ``path`` is a complete, uncorrupted checkpoint, else the reason."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                return f"format attribute is {f.attrs.get('format')!r}"
            if int(f.attrs.get("complete", 0)) != 1:
                return "incomplete (no 'complete' attribute)"
            if DIGEST_KEY in f.attrs and f.attrs[DIGEST_KEY] != attrs_digest(f.attrs):
                return "attributes damaged (their SHA-256 digest does not match)"
            _header(f, path)  # checkpoints older than the digest: the attributes must at least parse
            return damaged_dataset(f)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"


@dataclass
class Checkpoint:
    """A verified checkpoint file (read side)."""

    path: Path
    step: int
    ranks: int
    meta: dict[str, Any]
    config: dict[str, Any]

    def rows(self, name: str, row_start: int, row_stop: int) -> np.ndarray:
        """Rows of a sharded dataset (each rank reads only its own)."""
        with h5py.File(self.path, "r") as f:
            return np.asarray(f[name][row_start:row_stop])

    def require(self, name: str, shape: tuple[int, ...], kinds: str = "f",
                finite_rows: tuple[int, int] | None = None) -> None:
        """``BadInput`` unless dataset ``name`` exists with ``shape`` and a dtype of a numpy kind in ``kinds``
        (and its rows ``finite_rows``, when given, hold no NaN or infinity: each rank checks only its own)."""
        with h5py.File(self.path, "r") as f:
            d = f.get(name)
            if isinstance(d, h5py.Dataset) and d.shape == shape and d.dtype.kind in kinds:
                if finite_rows is None or np.isfinite(d[finite_rows[0]:finite_rows[1]]).all():
                    return
                raise BadInput(f"{self.path}: dataset '{name}' holds non-finite values; the checkpoint cannot be "
                               "resumed: run with --fresh to start over")
            got = "missing" if d is None else f"{getattr(d, 'shape', 'a group')} {getattr(d, 'dtype', '')}".strip()
        raise BadInput(f"{self.path}: dataset '{name}' is {got}, expected shape {shape}; the checkpoint does not "
                       "fit this problem: run with --fresh to start over")

    def has(self, name: str) -> bool:
        """Whether the file holds a dataset ``name``."""
        with h5py.File(self.path, "r") as f:
            return name in f

    def offsets(self) -> np.ndarray:
        """The partition (``shard_offsets``) the sharded datasets were written under."""
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["shard_offsets"][()], dtype=np.int64)

    def per_rank(self, name: str, rank: int) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return np.asarray(f[f"per_rank/{rank}/{name}"][()])

    def has_per_rank(self, name: str, rank: int) -> bool:
        with h5py.File(self.path, "r") as f:
            return f"per_rank/{rank}/{name}" in f

    def replicated(self, name: str) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return np.asarray(f[f"replicated/{name}"][()])


class CheckpointStore:
    """The checkpoints of one run directory (collective methods take ``comm``)."""

    def __init__(self, comm: MPI.Comm, cfg: Config, engine: str) -> None:
        self.comm = comm
        self.cfg = cfg
        self.engine = engine
        self.directory = Path(cfg.run.out_dir) / "checkpoints"
        self.config = cfg.model_dump(mode="json")
        self.saved: list[Path] = []

    def paths(self) -> list[Path]:
        """Checkpoint files present, newest (highest step) first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def clear(self) -> None:
        """Remove every checkpoint (``--fresh``), collective."""
        if self.comm.rank == 0:
            for p in self.paths():
                p.unlink()
        self.comm.Barrier()

    def save(self, step: int, offsets: np.ndarray, sharded: Mapping[str, np.ndarray],
             per_rank: Mapping[str, np.ndarray] | None = None,
             replicated: Mapping[str, np.ndarray] | None = None,
             meta: Mapping[str, Any] | None = None) -> Path:
        """Write a checkpoint for ``step`` and prune old ones (collective)."""
        if self.comm.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        path = self.directory / f"ckpt-{step:012d}.h5"
        attrs = {
            "format": FORMAT, "version": 1, "step": int(step), "ranks": self.comm.size, "engine": self.engine,
            "hpcql_version": __version__, "config_json": json.dumps(self.config),
            "meta_json": json.dumps(dict(meta or {})),
        }
        attrs[DIGEST_KEY] = attrs_digest(attrs)
        write_sharded(path, self.comm, offsets, sharded, attrs,
                      replicated={f"replicated/{k}": v for k, v in (replicated or {}).items()},
                      per_rank=per_rank, checksum=True, final_attrs={"complete": 1})
        if self.comm.rank == 0:
            for old in self.paths()[self.cfg.checkpoint.keep:]:
                old.unlink(missing_ok=True)
        return path

    def latest(self, warn) -> Checkpoint | None:
        """The newest valid checkpoint (corrupt ones reported through ``warn`` and skipped), collective."""

        def scan() -> Checkpoint | None:
            for p in self.paths():
                reason = verify(p)
                if reason is None:
                    with h5py.File(p, "r") as f:
                        return _header(f, p)
                warn(f"skipping checkpoint {p}: {reason}")
            return None

        found = self.comm.bcast(scan() if self.comm.rank == 0 else None)
        if found is not None:
            theirs, ours = _problem_signature(found.config), _problem_signature(self.config)
            if theirs != ours:
                diff = [k for k in PROBLEM_KEYS if theirs[k] != ours[k]]
                raise BadInput(f"{found.path}: checkpoint was written for a different problem ({', '.join(diff)} "
                               "differ); run with --fresh to start over", agreed=True)
        return found


def agree_flags(comm: MPI.Comm, *flags: bool) -> tuple[bool, ...]:
    """Logical OR of each flag over all ranks (one small allreduce)."""
    local = np.array(flags, dtype=np.int8)
    out = np.empty_like(local)
    comm.Allreduce(local, out, op=MPI.MAX)
    return tuple(bool(x) for x in out)


__all__ = ["Checkpoint", "CheckpointStore", "Checkpointed", "agree_flags", "verify", "collective"]
