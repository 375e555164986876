"""The DQN training loop of one rank: act, learn, exchange, evaluate, record the curve.

``sync``: gradients averaged with one blocking allreduce per update (replicas identical).
``async`` + ``overlap``: the allreduce overlapped with acting, applied ``max_staleness``
updates late (replicas still identical, results still deterministic).
Either allreduce goes through node shared memory or MPI (``algo.allreduce``; ``vector_allreduce``).
``async`` + ``parameter-server``: rank 0 is the server (see ``param_server``).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from mpi4py import MPI

from hpcql.config import Config, DQNAlgo
from hpcql.console import Console
from hpcql.dqn.envs import eval_episode_ids, greedy_returns
from hpcql.dqn.exchange import OverlapAllreduce, ReplicaCheck, SyncAllreduce
from hpcql.dqn.nstep import linear_epsilon
from hpcql.dqn.param_server import ParameterServer, PSWorker
from hpcql.dqn.trainer import ReplicaTrainer
from hpcql.faults import FaultInjector
from hpcql.timing import PhaseTimer
from hpcql.vector_allreduce import RowSum, vector_allreduce

COMM_PHASES = ("exchange", "wait", "reduce")  # the update time that is not computing
CURVE_COLUMNS = ("env_steps", "wall_seconds", "eval_return_mean", "eval_return_std", "train_return_mean",
                 "loss", "epsilon", "env_steps_per_s", "updates_per_s", "updates", "allreduce_seconds")


def scheme_of(algo: DQNAlgo) -> str:
    """"sync", "overlap" or "parameter-server"."""
    return "sync" if algo.mode == "sync" else algo.async_scheme


class DQNLoop:
    """Drives one rank's ``ReplicaTrainer``; every decision is a function of agreed counters."""

    def __init__(self, cfg: Config, comm: MPI.Comm, trainer: ReplicaTrainer, timer: PhaseTimer,
                 console: Console) -> None:
        algo: DQNAlgo = cfg.algo  # type: ignore[assignment]
        self.cfg, self.algo, self.comm, self.trainer, self.timer, self.console = cfg, algo, comm, trainer, timer, console
        self.scheme = scheme_of(algo)
        self.steps_per_vec = cfg.env.num_envs * comm.size  # global env steps per vector step of every rank
        self.total_vec = math.ceil(algo.total_steps / self.steps_per_vec)
        self.eval_every_vec = max(1, round(algo.eval_every / self.steps_per_vec))
        self.learn_start_vec = max(algo.n_step, math.ceil(algo.learning_starts / self.steps_per_vec))
        if self.scheme in ("sync", "overlap"):
            lag = algo.max_staleness if self.scheme == "overlap" else 0
            self.reducer = vector_allreduce(algo.allreduce, comm, trainer.flat.size, lag, cfg.debug.ranks_per_node)
        if self.scheme == "sync":
            self.exchange: Any = SyncAllreduce(comm, timer, self.reducer, trainer.flat.array)
        elif self.scheme == "overlap":
            self.exchange = OverlapAllreduce(comm, timer, self.reducer, trainer.flat.array, algo.max_staleness)
        elif comm.rank == 0:
            self.exchange = ParameterServer(comm, trainer, timer)
        else:
            self.exchange = PSWorker(comm, trainer, timer, algo.max_staleness)
        # sync/overlap: checksums every check_every updates, compared one check later
        self.check = ReplicaCheck(comm) if self.scheme != "parameter-server" and algo.check_every else None
        self.faults = FaultInjector(cfg.debug, comm.rank)
        self.curve: list[dict[str, float]] = []
        self.eval_returns: list[np.ndarray] = []
        self.solved_at: tuple[int, float] | None = None  # (global env steps, wall seconds)
        self.wall_offset = 0.0  # wall seconds of earlier segments (resume)
        self.t0 = time.perf_counter()
        self.last_eval = (0, 0.0, 0)  # (global steps, wall, updates) at the previous evaluation
        self.evaluated_at = -1  # vector step of the latest evaluation
        # seconds in apply_grads (part of compute): clipping and Adam, with the averaging of a
        # shared-memory reduction inside their passes; against 1 rank, what that averaging costs
        self.apply_seconds = 0.0

    # ----------------------------------------------------------------- counters
    @property
    def global_steps(self) -> int:
        return self.trainer.vec_steps * self.steps_per_vec

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t0

    def epsilon(self) -> float:
        a = self.algo
        return linear_epsilon(self.global_steps, a.eps_start, a.eps_end, a.eps_decay_steps)

    # ----------------------------------------------------------------- learning
    def _apply(self, grad: np.ndarray | RowSum, progress: Callable[[], None] | None = None) -> None:
        """Apply an averaged gradient (``progress``: the overlap scheme's poll, midway)."""
        with self.timer.phase("compute"):
            t0 = time.perf_counter()
            self.trainer.apply_grads(grad, progress)
            self.apply_seconds += time.perf_counter() - t0
        self._after_update()

    def _after_update(self) -> None:
        a, t = self.algo, self.trainer
        if t.updates == a.diverge_at_update and self.comm.rank == a.diverge_rank:
            with torch.no_grad():
                next(t.q.parameters()).view(-1)[0] += 1e-3  # debug: a replica that silently diverged
        if self.check is not None:
            if t.updates % a.check_every == 0:
                with self.timer.phase("exchange"):
                    self.check.post(t.q, t.updates)
            else:
                self.check.poll()

    def complete_check(self) -> None:
        """Compare the replica check in flight (collective; raises on a mismatch)."""
        if self.check is not None:
            with self.timer.phase("exchange"):
                self.check.complete()

    def update(self, updates_after: int = 0) -> None:
        """One gradient update, the way the mode says.

        ``updates_after``: updates that follow this one before the next acting (the rest of the
        training round); sync and overlap draw their minibatches while a reduction they need is
        not complete.
        """
        self.faults.tick(self.trainer.updates)
        # the rest of the round's minibatches, drawn while a reduction is not complete
        ahead = functools.partial(self.trainer.prepare_batch, updates_after) if updates_after else None
        if self.scheme == "sync":
            with self.timer.phase("compute"):  # straight into the reducer's slot (no copy to post)
                grad = self.trainer.compute_grads(into=self.exchange.grad_buffer())
            self._apply(self.exchange.average(grad, ahead))
        elif self.scheme == "overlap":
            with self.timer.phase("compute"):  # MPI advances the pending reductions midway (poll)
                grad = self.trainer.compute_grads(self.exchange.poll, into=self.exchange.grad_buffer())
            self.exchange.start(grad, self.trainer.updates)
            for avg in self.exchange.ready(self.trainer.updates, meanwhile=ahead):
                self._apply(avg, self.exchange.poll)
        else:
            with self.timer.phase("compute"):
                self.exchange.update()

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> float:
        """Greedy episodes spread over ranks, reduced; appends a curve point (collective)."""
        if self.scheme == "parameter-server":
            self.exchange.quiesce()
        comm, t = self.comm, self.trainer
        with self.timer.phase("eval"):
            ids = eval_episode_ids(self.algo.eval_episodes, comm.rank, comm.size)
            local = greedy_returns(self.cfg.env, t.greedy, ids, self.cfg.run.seed) if ids else np.zeros(0)
            loss_sum, loss_count, train_returns = t.drain_stats()
            gathered = comm.allgather((ids, local.tolist(), loss_sum, loss_count, train_returns))
        returns = np.zeros(self.algo.eval_episodes)
        for rank_ids, rank_returns, *_ in gathered:
            returns[rank_ids] = rank_returns
        loss_total = sum(g[2] for g in gathered)
        loss_n = sum(g[3] for g in gathered)
        train = [r for g in gathered for r in g[4]]
        comm_seconds = comm.allreduce(sum(self.timer.seconds.get(p, 0.0) for p in COMM_PHASES), op=MPI.MAX)
        # sync/overlap: every replica applied the same updates; PS: the master's count (agreed in quiesce)
        updates = int(self.exchange.version) if self.scheme == "parameter-server" else t.updates
        steps, wall = self.global_steps, self.wall()
        d_steps, d_wall, d_updates = steps - self.last_eval[0], wall - self.last_eval[1], updates - self.last_eval[2]
        point = {
            "env_steps": steps, "wall_seconds": wall,
            "eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
            "train_return_mean": float(np.mean(train)) if train else float("nan"),
            "loss": loss_total / loss_n if loss_n else float("nan"),
            "epsilon": self.epsilon(),
            "env_steps_per_s": d_steps / d_wall if d_wall > 0 else float("nan"),
            "updates_per_s": d_updates / d_wall if d_wall > 0 else float("nan"),
            "updates": updates, "allreduce_seconds": comm_seconds,
        }
        self.last_eval = (steps, wall, updates)
        self.curve.append(point)
        self.eval_returns.append(returns)
        self.console.info(f"eval @ {steps:,} env steps ({wall:.1f} s): return {point['eval_return_mean']:.1f} "
                          f"± {point['eval_return_std']:.1f} over {len(returns)} episodes, loss {point['loss']:.4g}, "
                          f"eps {point['epsilon']:.3f}, {point['env_steps_per_s']:.0f} env steps/s, "
                          f"{point['updates_per_s']:.1f} updates/s")
        return point["eval_return_mean"]

    def _solved(self, mean: float) -> bool:
        target = self.algo.target_return
        if target is not None and mean >= target and self.solved_at is None:
            self.solved_at = (self.global_steps, self.wall())
        return target is not None and mean >= target

    # ----------------------------------------------------------------- the loop
    def run(self, control: Any = None) -> None:
        """Act and learn until the budget is spent or an evaluation reaches ``target_return``.

        ``control`` (a ``DQNControl``) sees every vector step (periodic / signal checkpoints)
        and every evaluation (``every_iterations`` checkpoints); it may raise ``Checkpointed``.
        """
        t, a = self.trainer, self.algo
        tracker = self.console.tracker("env steps", total=a.total_steps)
        try:
            while t.vec_steps < self.total_vec:
                with self.timer.phase("act"):
                    t.act(self.epsilon())
                if self.scheme != "sync":
                    self.exchange.poll()
                if t.vec_steps >= self.learn_start_vec and t.vec_steps % a.train_every == 0:
                    for i in range(a.gradient_steps):
                        self.update(updates_after=a.gradient_steps - i - 1)
                if t.vec_steps % self.eval_every_vec == 0:
                    self.evaluated_at = t.vec_steps
                    if self._solved(self.evaluate()):
                        self.finish(evaluated=True)
                        return
                    if control is not None:
                        control.after_evaluation(self)
                if t.vec_steps % 16 == 0:
                    tracker.update(self.global_steps, eps=self.epsilon())
                if control is not None:
                    control.step(self)
            done_at_eval = self.evaluated_at == t.vec_steps
            self.finish(evaluated=done_at_eval)
            if not done_at_eval:
                self._solved(self.evaluate())
        finally:
            tracker.close()

    def finish(self, evaluated: bool) -> None:
        """Bring the replicas to their final, identical parameters (collective).

        When the last step was just evaluated those parameters are final: overlapped
        reductions still in flight are completed and dropped, so the result file holds
        exactly the evaluated network. The replica check in flight is compared.
        """
        if self.scheme == "overlap":
            if evaluated:
                self.exchange.drop()
            else:
                for avg in self.exchange.ready(self.trainer.updates, flush=True):
                    self._apply(avg)
        elif self.scheme == "parameter-server" and not evaluated:
            self.exchange.quiesce()
        self.complete_check()

    def release(self) -> None:
        """Complete and drop overlapped reductions still pending (none after ``finish``), then free
        the gradient reducer's window and communicators (collective: every rank at the same step).
        A replica check still in flight (a run stopped on bad input) is freed uncompared."""
        if self.check is not None:
            self.check.complete(compare=False)
        if self.scheme == "overlap":
            self.exchange.drop()
        if self.scheme in ("sync", "overlap"):
            self.reducer.close()

    def blocked_fraction(self) -> float:
        """overlap: the share of completions, over all ranks, that waited for their reduction (collective)."""
        waited = self.comm.allreduce(self.exchange.blocked)
        total = self.comm.allreduce(len(self.exchange.staleness))
        return waited / total if total else 0.0

    def staleness(self) -> list[int]:
        """Staleness (in updates) of the gradients applied, gathered on every rank."""
        own = list(getattr(self.exchange, "staleness", []))
        return [s for part in self.comm.allgather(own if self.scheme != "overlap" or self.comm.rank == 0 else [])
                for s in part]
