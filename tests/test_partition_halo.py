"""Partitions and halo plans are pure functions (tested without MPI); moving rows between partitions."""

import numpy as np
import pytest

from conftest import REPO, mpirun
from hpcql.halo import ghost_layout, send_lists
from hpcql.partition import owner_of, uniform_partition, weighted_partition
from hpcql.redistribute import overlaps


def test_uniform_partition_covers_all_states():
    off = uniform_partition(10, 3)
    assert off.tolist() == [0, 4, 7, 10]
    assert uniform_partition(2, 4).tolist() == [0, 1, 2, 2, 2]


def test_weighted_partition_balances_nnz():
    rng = np.random.default_rng(0)
    nnz = rng.integers(1, 50, size=10_000)
    nnz[:100] = 5000  # heavy head
    cum = np.concatenate(([0], np.cumsum(nnz)))
    off = weighted_partition(cum, 4)
    assert off[0] == 0 and off[-1] == 10_000 and np.all(np.diff(off) >= 0)
    loads = np.diff(cum[off])
    assert loads.max() / loads.mean() < 1.05  # within 5% of perfect balance
    # the heavy head makes the first rank much shorter in states
    assert off[1] < 2500


def test_owner_of():
    off = np.array([0, 3, 3, 8])
    assert owner_of(np.array([0, 2, 3, 7]), off).tolist() == [0, 0, 2, 2]


def test_ghost_layout_and_send_lists_are_consistent():
    offsets = np.array([0, 4, 8, 12])
    rng = np.random.default_rng(1)
    cols = {r: rng.integers(0, 12, size=30) for r in range(3)}
    layouts = {r: ghost_layout(cols[r], offsets, r) for r in range(3)}
    for r, lay in layouts.items():
        start, stop = offsets[r], offsets[r + 1]
        # every ghost is off-rank, sorted, and grouped by owner as recv_counts say
        assert np.all((lay.ghost_states < start) | (lay.ghost_states >= stop))
        assert np.all(np.diff(lay.ghost_states) > 0)
        assert lay.recv_counts.sum() == lay.ghost_states.size
        assert lay.recv_counts[r] == 0
        # remapped columns address the same global state in [local | ghosts]
        ext_ids = np.concatenate((np.arange(start, stop), lay.ghost_states))
        assert np.array_equal(ext_ids[lay.local_cols], cols[r])
    # what rank q asks of rank r is exactly what r sends to q, as local indices
    for r in range(3):
        requests = []
        for q in range(3):
            lay = layouts[q]
            lo = lay.recv_counts[:r].sum()
            requests.append(lay.ghost_states[lo: lo + lay.recv_counts[r]])
        sends = send_lists(requests, offsets[r])
        for q in range(3):
            assert np.all((sends[q] >= 0) & (sends[q] < 4))
            assert np.array_equal(sends[q] + offsets[r], requests[q])


def test_overlaps_of_a_block_with_a_partition():
    offsets = np.array([0, 4, 4, 10, 12])
    assert overlaps(3, 11, offsets).tolist() == [1, 0, 6, 1]
    assert overlaps(5, 5, offsets).tolist() == [0, 0, 0, 0]
    assert overlaps(0, 12, offsets).tolist() == [4, 0, 6, 2]


@pytest.mark.parametrize("ranks,cuts", [(2, "50"), (3, "5,6"), (3, "40,62"), (4, "1,30,31")])
def test_rows_move_to_another_partition(ranks, cuts):
    """Moved shards equal shards built directly for the new rows (uneven, one-state and skewed blocks)."""
    proc = mpirun([str(REPO / "tests/mpi_scripts/move_rows.py"), cuts], ranks=ranks, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"
