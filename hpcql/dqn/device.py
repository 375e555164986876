"""Per-rank compute resources: torch threads shared among a node's ranks, one GPU per local rank."""

from __future__ import annotations

import os

import torch
from mpi4py import MPI
from threadpoolctl import threadpool_limits

from hpcql.affinity import node_share


def setup_device(comm: MPI.Comm, choice: str, deterministic: bool) -> tuple[torch.device, int]:
    """Give torch and BLAS this rank's share of the node's cores and pick the device (collective).

    ``auto``/``cuda``: GPU ``local_rank % device_count`` when CUDA is available, else CPU.
    Returns (device, threads for torch and numpy's BLAS); OMP_NUM_THREADS, when set, caps the threads.
    """
    local_rank, threads = node_share(comm)
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
