"""Asynchronous parameter server (Gorila / A3C-style) over point-to-point MPI.

Rank 0 holds the master parameters and the optimizer; it also acts and learns.
Workers (ranks >= 1) push gradients tagged with the parameter version they were
computed on (``Isend``), keep acting, and load fresh parameters when the server's
reply arrives (``Irecv``/``Test``); the server picks gradients up with ``Iprobe``
between its own steps and replies at once. No global synchronisation except at
evaluation points (``quiesce``), where all in-flight messages drain and the master
parameters are broadcast.

The master takes one optimizer step per ``comm.size`` gradients, whoever sent them
(``GradientGroup``): the mean of that many local batches, the same global batch and
the same updates per env step as sync mode, so the learning rate, the target-network
period and the replay ratio mean the same in every mode. Applying every gradient on
its own (Gorila) gives N ranks N times the optimizer steps per env step on batches
N times smaller; at 4 ranks that made Acrobot-v1 miss its target in 2 of 5 runs.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from hpcql.comm import wait_yielding
from hpcql.dqn.trainer import ReplicaTrainer
from hpcql.timing import PhaseTimer

TAG_GRAD, TAG_PARAMS = 71, 72


def _message(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A byte buffer holding an int64 version header and ``n`` float32 values, and its two views."""
    buf = np.zeros(8 + 4 * n, dtype=np.uint8)
    return buf, buf[:8].view(np.int64), buf[8:].view(np.float32)


class GradientGroup:
    """Sums gradients until ``size`` have come, then hands out their mean (one optimizer step)."""

    def __init__(self, n: int, size: int) -> None:
        self.size = size
        self.sum = np.zeros(n, dtype=np.float32)
        self.count = 0

    def add(self, grad: np.ndarray) -> np.ndarray | None:
        """Add one gradient; the group's mean once it is complete, else None."""
        self.sum += grad
        self.count += 1
        return self.take() if self.count == self.size else None

    def take(self) -> np.ndarray | None:
        """The mean of the gradients added since the last take (None if none); starts a new group."""
        if self.count == 0:
            return None
        mean = self.sum / np.float32(self.count)
        self.sum[...] = 0.0
        self.count = 0
        return mean


class ParameterServer:
    """Rank 0: master parameters + optimizer; serves worker gradients as they come."""

    def __init__(self, comm: MPI.Comm, trainer: ReplicaTrainer, timer: PhaseTimer) -> None:
        self.comm, self.trainer, self.timer = comm, trainer, timer
        self.n = trainer.flat.size
        self.recv, self.recv_hdr, self.recv_payload = _message(self.n)
        self.sends: list[tuple[MPI.Request, np.ndarray]] = []
        self.version = 0
        self.staleness: list[int] = []  # of worker gradients, in master updates
        self.group = GradientGroup(self.n, comm.size)

    def _step(self, mean: np.ndarray | None) -> None:
        """One master optimizer step on a group's mean gradient (none while the group is open)."""
        if mean is not None:
            self.trainer.apply_grads(mean)
            self.version += 1

    def serve(self) -> None:
        """Add every worker gradient that has arrived to the group and reply with the current parameters."""
        if self.comm.size == 1:
            return
        status = MPI.Status()
        t0 = time.perf_counter()
        while self.comm.Iprobe(MPI.ANY_SOURCE, TAG_GRAD, status):
            src = status.Get_source()
            self.comm.Recv([self.recv, MPI.BYTE], src, TAG_GRAD)
            self.staleness.append(self.version - int(self.recv_hdr[0]))
            self._step(self.group.add(self.recv_payload))
            reply, hdr, payload = _message(self.n)
            hdr[0] = self.version
            self.trainer.flat.gather_params(payload)
            self.sends.append((self.comm.Isend([reply, MPI.BYTE], src, TAG_PARAMS), reply))
        self.sends = [(r, b) for r, b in self.sends if not r.Test()]
        self.timer.add("exchange", time.perf_counter() - t0)

    def update(self) -> None:
        """The server's own gradient (never stale) into the group, then serve the workers."""
        self._step(self.group.add(self.trainer.compute_grads()))
        self.serve()

    def poll(self) -> None:
        self.serve()

    def quiesce(self) -> None:
        """Serve until every worker has drained its in-flight gradients, step on an unfinished
        group (nothing stays pending across an evaluation or checkpoint), then broadcast (collective)."""
        t0 = time.perf_counter()
        if self.comm.size > 1:
            wait_yielding(self.comm.Ibarrier(), self.serve)
            MPI.Request.Waitall([r for r, _ in self.sends])
            self.sends = []
        self.timer.add("wait", time.perf_counter() - t0)
        self._step(self.group.take())
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
        wait_yielding(self.recv_req)
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
        wait_yielding(self.comm.Ibarrier())
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
