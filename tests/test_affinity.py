"""Binding unbound ranks to cores (``hpcql.affinity``): the pure split, then real launches."""

from __future__ import annotations

import json
import os

import pytest

from conftest import REPO, mpirun
from hpcql.affinity import share_of

SCRIPT = str(REPO / "tests/mpi_scripts/bind_ranks.py")
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def test_share_of_splits_contiguously_and_drops_the_remainder() -> None:
    cpus = [0, 1, 2, 3, 4, 5, 6, 7]
    assert [share_of(cpus, r, 3) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [share_of([4, 9], r, 2) for r in range(2)] == [[4], [9]]


def launch(ranks: int, mode: str, start: str) -> dict:
    proc = mpirun([SCRIPT, mode, start], ranks=ranks, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs")
def test_unbound_ranks_get_disjoint_equal_shares() -> None:
    got = launch(2, "auto", "same")
    assert got["before"][0] == got["before"][1]  # mpiexec left them unbound
    a, b = got["after"]
    assert got["returned"] == got["after"]
    assert len(a) == len(b) == CPUS // 2 and not set(a) & set(b)
    assert set(a) | set(b) <= set(got["before"][0])
    assert got["threads"] == [CPUS // 2] * 2


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs")
def test_off_leaves_affinity_alone_and_threads_share_the_set() -> None:
    got = launch(2, "off", "same")
    assert got["after"] == got["before"] and got["returned"] == [None, None]
    assert got["threads"] == [CPUS // 2] * 2


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs")
def test_ranks_bound_by_the_launcher_are_left_alone() -> None:
    got = launch(2, "auto", "own")
    assert got["after"] == got["before"] and got["returned"] == [None, None]
    assert got["threads"] == [1, 1]


def test_more_ranks_than_cpus_stay_unbound() -> None:
    got = launch(CPUS + 1, "auto", "same")
    assert got["after"] == got["before"] and got["returned"] == [None] * (CPUS + 1)
    assert got["threads"] == [max(1, CPUS // (CPUS + 1))] * (CPUS + 1)
