"""Asynchronous parameter server (Gorila / A3C-style) over point-to-point MPI.

Rank 0 holds the master parameters and the optimizer; it also acts and learns,
applying its own gradients at once. Workers (ranks >= 1) push gradients tagged with
the parameter version they were computed on (``Isend``), keep acting, and load fresh
parameters when the server's reply arrives (``Irecv``/``Test``); the server picks
gradients up with ``Iprobe`` between its own steps. No global synchronisation
except at evaluation points (``quiesce``), where all in-flight messages drain and the
master parameters are broadcast.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcql.dqn.trainer import ReplicaTrainer
from hpcql.timing import PhaseTimer

TAG_GRAD, TAG_PARAMS = 71, 72


def _message(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A byte buffer holding an int64 version header and ``n`` float32 values, and its two views."""
    buf = np.zeros(8 + 4 * n, dtype=np.uint8)
    return buf, buf[:8].view(np.int64), buf[8:].view(np.float32)


class ParameterServer:
    """Rank 0: master parameters + optimizer; serves worker gradients as they come."""

    def __init__(self, comm: MPI.Comm, trainer: ReplicaTrainer, timer: PhaseTimer) -> None:
        self.comm, self.trainer, self.timer = comm, trainer, timer
        self.n = trainer.flat.size
        self.recv, self.recv_hdr, self.recv_payload = _message(self.n)
        self.sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.version = 0
        self.staleness: list[int] = []  # of worker gradients, in master updates

    def serve(self) -> None:
        """Apply every worker gradient that has arrived and reply with fresh parameters."""
        if self.comm.size == 1:
            return
        status = MPI.Status()
        t0 = time.perf_counter()
        while self.comm.Iprobe(MPI.ANY_SOURCE, TAG_GRAD, status):
            src = status.Get_source()
            self.comm.Recv([self.recv, MPI.BYTE], src, TAG_GRAD)
            self.staleness.append(self.version - int(self.recv_hdr[0]))
            self.trainer.apply_grads(self.recv_payload)
            self.version += 1
            reply, hdr, payload = _message(self.n)
            hdr[0] = self.version
            self.trainer.flat.gather_params(payload)
            self.sends.append((self.comm.Isend([reply, MPI.BYTE], src, TAG_PARAMS), reply))
        self.sends = [(r, b) for r, b in self.sends if not r.Test()]
        self.timer.add("exchange", time.perf_counter() - t0)

    def update(self) -> None:
        """The server's own gradient step (never stale)."""
        self.trainer.apply_grads(self.trainer.compute_grads())
        self.version += 1
        self.serve()

    def poll(self) -> None:
        self.serve()

    def quiesce(self) -> None:
        """Serve until every worker has drained its in-flight gradients, then broadcast (collective)."""
        t0 = time.perf_counter()
        if self.comm.size > 1:
            barrier = self.comm.Ibarrier()
            while not barrier.Test():
                self.serve()
            MPI.Request.Waitall([r for r, _ in self.sends])
            self.sends = []
        self.timer.add("wait", time.perf_counter() - t0)
        _broadcast_master(self.comm, self.trainer, self.version, self.timer)


class PSWorker:
    """Ranks >= 1: act and compute gradients on possibly stale parameters; push, pull."""

    def __init__(self, comm: MPI.Comm, trainer: ReplicaTrainer, timer: PhaseTimer, max_inflight: int) -> None:
        self.comm, self.trainer, self.timer = comm, trainer, timer
        self.max_inflight = max(1, max_inflight)
        self.n = trainer.flat.size
        self.recv, self.recv_hdr, self.recv_payload = _message(self.n)
        self.recv_req: MPI.Request | None = None
        self.sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.inflight = 0
        self.version = 0
        self.local_updates = 0
        self.staleness: list[int] = []  # measured on rank 0

    def _on_reply(self) -> None:
        self.trainer.flat.scatter_params(self.recv_payload)
        self.version = int(self.recv_hdr[0])
        self.inflight -= 1
        self.recv_req = None
        self._post()

    def _post(self) -> None:
        if self.inflight > 0 and self.recv_req is None:
            self.recv_req = self.comm.Irecv([self.recv, MPI.BYTE], 0, TAG_PARAMS)

    def poll(self) -> None:
        """Take fresh parameters if a reply has arrived (never blocks)."""
        if self.recv_req is not None and self.recv_req.Test():
            self._on_reply()

    def _wait_reply(self) -> None:
        t0 = time.perf_counter()
        self.recv_req.Wait()
        self.timer.add("wait", time.perf_counter() - t0)
        self._on_reply()

    def update(self) -> None:
        """Compute a gradient on the current parameters and push it to the server."""
        self.poll()
        while self.inflight >= self.max_inflight:
            self._wait_reply()
        grad = self.trainer.compute_grads()
        t0 = time.perf_counter()
        self.sends = [(r, b) for r, b in self.sends if not r.Test()]
        buf, hdr, payload = _message(self.n)
        hdr[0] = self.version
        payload[...] = grad
        self.sends.append((self.comm.Isend([buf, MPI.BYTE], 0, TAG_GRAD), buf))
        self.inflight += 1
        self._post()
        self.timer.add("exchange", time.perf_counter() - t0)
        self.local_updates += 1
        self.trainer.updates += 1
        if self.local_updates % self.trainer.algo.target_update_every == 0:
            self.trainer.sync_target()

    def quiesce(self) -> None:
        """Drain in-flight gradients, meet the server, take the master parameters (collective)."""
        t0 = time.perf_counter()
        while self.inflight > 0:
            self._wait_reply()
        MPI.Request.Waitall([r for r, _ in self.sends])
        self.sends = []
        self.comm.Ibarrier().Wait()
        self.timer.add("wait", time.perf_counter() - t0)
        self.version = _broadcast_master(self.comm, self.trainer, self.version, self.timer)


def _broadcast_master(comm: MPI.Comm, trainer: ReplicaTrainer, version: int, timer: PhaseTimer) -> int:
    """Rank 0's parameters and version onto every rank."""
    if comm.size == 1:
        return version
    t0 = time.perf_counter()
    buf, hdr, payload = _message(trainer.flat.size)
    if comm.rank == 0:
        hdr[0] = version
        trainer.flat.gather_params(payload)
    comm.Bcast([buf, MPI.BYTE], root=0)
    if comm.rank != 0:
        trainer.flat.scatter_params(payload)
    timer.add("exchange", time.perf_counter() - t0)
    return int(hdr[0])
