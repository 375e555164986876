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


@pytest.mark.parametrize("ranks,late,bad", [(2, 1, -1), (2, 0, 1), (3, 2, 2), (4, 3, 1)])
def test_replica_check_does_not_synchronise_and_catches_divergence(ranks: int, late: int, bad: int) -> None:
    """The DQN replica check posts without waiting for a late rank, and a nudged replica makes
    every rank raise at the comparison, naming the update and the rank."""
    p = mpirun([str(REPO / "tests/mpi_scripts/replica_check.py"), str(late), str(bad)], ranks=ranks, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = sorted(line for line in p.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == ranks, p.stdout
    for r, line in enumerate(lines):
        post_s = float(line.split("post_s=")[1].split()[0])
        if r != late:  # the late rank was 0.5 s behind: a blocking allgather would hold the others that long
            assert post_s < 0.25, line
        raised = line.split("raised=", 1)[1]
        if bad < 0:
            assert raised == "none", line
        else:
            assert raised.startswith(f"replicas diverged at update 20: rank(s) [{bad}] differ from rank 0"), line
