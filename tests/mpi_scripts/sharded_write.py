"""Write a row-sharded checkpoint-style file (one rank owns no rows) and check it on rank 0.

Usage: sharded_write.py OUT.h5 (3 ranks). Exits non-zero on a mismatch. Runs the mpio path
when h5py is built against parallel HDF5 and the rank-turn path otherwise. Then rank 0 flips
bytes inside one rank's per-rank dataset: Fletcher32 (rank turns) or its SHA-256 attribute
(mpio, where per-rank datasets cannot be filtered) must report it.
"""

from __future__ import annotations

import sys

import h5py
import numpy as np
from mpi4py import MPI

from hpcql.h5io import DATA_DIGEST, PARALLEL_HDF5, damaged_dataset, write_sharded

comm = MPI.COMM_WORLD
out = sys.argv[1]
offsets = np.array([0, 5, 5, 9])  # rank 1 owns no rows: it must still take part in collective writes
r = comm.rank
rows = np.arange(offsets[r], offsets[r + 1])
arrays = {"V": rows * 1.5, "Q": np.stack([rows, -rows], 1).astype(np.float32), "n": rows.astype(np.int64)}
write_sharded(out, comm, offsets, arrays, {"a": 1}, replicated={"rep": np.arange(7.0), "s": np.float64(3)},
              checksum=True, per_rank={"mine": np.full(r + 1, r), "big": np.arange(1000.0) + r}, final_attrs={"complete": 1})
if r == 0:
    with h5py.File(out) as f:
        every = np.arange(9)
        assert np.array_equal(f["V"][()], every * 1.5) and np.array_equal(f["n"][()], every)
        assert np.array_equal(f["Q"][()], np.stack([every, -every], 1))
        assert np.array_equal(f["rep"][()], np.arange(7.0)) and f["s"][()] == 3
        assert [f[f"per_rank/{k}/mine"][()].tolist() for k in range(3)] == [[0], [1, 1], [2, 2, 2]]
        assert all(f[k].fletcher32 for k in ("V", "Q", "n", "rep")), "sharded/replicated datasets lost Fletcher32"
        assert f["per_rank/0/mine"].fletcher32 == (not PARALLEL_HDF5)
        assert f.attrs["complete"] == 1 and f.attrs["a"] == 1
        assert (DATA_DIGEST in f["per_rank/1/big"].attrs) == PARALLEL_HDF5
        assert damaged_dataset(f) is None
        big = f["per_rank/1/big"]
        offset = big.id.get_offset() if big.chunks is None else big.id.get_chunk_info(0).byte_offset
    data = bytearray(open(out, "rb").read())
    for i in range(16):
        data[offset + 800 + i] ^= 0xFF
    open(out, "wb").write(bytes(data))
    with h5py.File(out) as f:
        try:
            reason = damaged_dataset(f)
        except OSError as exc:  # Fletcher32
            reason = str(exc)
    assert reason is not None, "flipped bytes in per_rank/1/big went unnoticed"
    assert PARALLEL_HDF5 == ("per_rank/1/big" in reason), reason
    print(f"ok (parallel HDF5: {PARALLEL_HDF5}; damage reported: {reason.splitlines()[0]})")
