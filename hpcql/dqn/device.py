"""Per-rank compute resources: torch threads shared among a node's ranks, one GPU per local rank."""

from __future__ import annotations

import os

import torch
from mpi4py import MPI
from threadpoolctl import threadpool_limits


def node_local(comm: MPI.Comm) -> tuple[int, int]:
    """(local rank, ranks on this node)."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        return local.rank, local.size
    finally:
        local.Free()


def setup_device(comm: MPI.Comm, choice: str, deterministic: bool) -> tuple[torch.device, int]:
    """Divide this node's cores among its ranks and pick the device (collective).

    ``auto``/``cuda``: GPU ``local_rank % device_count`` when CUDA is available, else CPU.
    Returns (device, threads for torch and numpy's BLAS); OMP_NUM_THREADS, when set, caps the threads.
    """
    local_rank, local_size = node_local(comm)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // local_size)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # an explicit user cap wins
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")  # numpy's BLAS (the numpy engine) gets the same share
    # Adam's moments of gradients that stay zero (dead ReLU units) decay into float32 subnormals,
    # which x86 cores process some 100x slower: flush them to zero (this thread, every rank alike)
    torch.set_flush_denormal(True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if choice != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return device, threads
