"""The gradient reducers (node shared memory, MPI) against a float64 reference, under mpiexec."""

from __future__ import annotations

import pytest

from conftest import REPO, mpirun

SCRIPT = str(REPO / "tests/mpi_scripts/vector_allreduce_check.py")


@pytest.mark.parametrize("ranks,kind,ranks_per_node,direct_max,lag,layout", [
    (2, "shared-memory", 0, 4, 0, "nodes=1 direct=True"),   # the 2-rank DQN case: each rank sums both slots
    (3, "shared-memory", 0, 4, 2, "nodes=1 direct=True"),   # reductions in flight (overlap)
    (3, "shared-memory", 0, 1, 0, "nodes=1 direct=False"),  # chunked node sum (large nodes)
    (4, "shared-memory", 0, 1, 1, "nodes=1 direct=False"),
    (4, "shared-memory", 2, 4, 0, "nodes=2 direct=False"),  # two emulated nodes: leader sums, Iallreduce
    (4, "shared-memory", 2, 1, 2, "nodes=2 direct=False"),  # two nodes, chunked, in flight
    (3, "shared-memory", 1, 4, 1, "nodes=3 direct=False"),  # one rank per node: MPI between leaders only
    (3, "mpi", 0, 4, 1, "nodes=1 direct=None"),
])
def test_sums_match_reference_and_agree(ranks: int, kind: str, ranks_per_node: int, direct_max: int, lag: int,
                                        layout: str) -> None:
    p = mpirun([SCRIPT, kind, str(ranks_per_node), str(direct_max), str(lag)], ranks=ranks, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"ok {layout}" in p.stdout, p.stdout
