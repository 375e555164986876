"""Checkpoint / resume for the DQN engine (periodic and on SIGTERM / SIGUSR1).

When are checkpoints written?

- ``[checkpoint] every_iterations = N``: after every N-th *evaluation* (an evaluation
  point is reached by every rank at the same vector step, and in parameter-server
  mode it is already a quiesced point), so it needs no extra communication.
- ``every_seconds`` and stop signals: each rank's two local flags (time due, signal
  received) go into a non-blocking ``Iallreduce`` started every ``FLAG_EVERY`` vector
  steps and completed ``FLAG_EVERY`` steps later, at the same vector step on every
  rank. The ranks therefore never wait for each other for it (overlap and
  parameter-server modes keep running asynchronously) and all of them act on the
  same agreed flags at the same point. On a signal the run saves and raises
  ``Checkpointed`` (exit 3, requeue).
- Parameter-server mode saves only at quiesced points: at evaluations, or (time /
  signal) after an extra ``quiesce`` (all in-flight gradients drained, rank 0's master
  parameters broadcast), so the replicated network really is the master network.

What is in a checkpoint (engine ``dqn``)?

- ``replicated``: ``q`` and ``target`` (flat float32 parameters), ``optimizer``
  (the Adam state, pickled as uint8) and ``loop`` (learning curve, evaluation
  returns, solved/last-evaluation marks, overlapped gradients still pending; pickled).
  In sync and overlap modes these are bit-identical on all ranks; in
  parameter-server mode they are rank 0's (the master's).
- ``per_rank``: the replay shard (``replay_<field>``, physical ring layout) and
  ``state`` (pickled: numpy and torch RNG states, the pickled vector env with its
  physics and RNGs, n-step windows, current observations, episode returns, step and
  update counters, loss sums; parameter server: the worker's target network and
  counters).
- ``meta``: global env steps, updates, scheme, rank count, envs per rank.

Resume under the same rank count and env count restores every rank exactly: a sync
(and overlap) run continues bit-for-bit as if never interrupted. Under another rank
count the network, target, optimizer and curve are restored identically; the global
env-step count is kept (the vector-step counter is recomputed); the replay shards are
redistributed (every new rank takes a round-robin share of the union of the old
shards, oldest first; what exceeds a new shard's capacity is dropped, oldest first, and
reported); new rank ``r`` takes old rank ``r``'s envs, n-step windows and RNGs when that
rank existed and had the same number of envs, else it starts fresh episodes from
seeds derived from the run seed and the global step. What is dropped is printed.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from hpcql import signals
from hpcql.checkpoint import Checkpoint, Checkpointed, CheckpointStore
from hpcql.comm import wait_yielding
from hpcql.config import Config
from hpcql.console import Console
from hpcql.dqn.envs import rank_env_seeds
from hpcql.dqn.replay import FIELDS
from hpcql.dqn.trainer import _to_numpy
from hpcql.errors import BadInput
from hpcql.timing import PhaseTimer

ENGINE = "dqn"
FLAG_EVERY = 16  # vector steps between the start and the use of a flag reduction


def pack(obj: Any) -> np.ndarray:
    """Any picklable object as a uint8 array (opaque state)."""
    return np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy()


def unpack(arr: np.ndarray) -> Any:
    return pickle.loads(np.asarray(arr, dtype=np.uint8).tobytes())


def chronological(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """A replay shard's physical ring contents reordered oldest first."""
    size, pos, cap = int(state["size"]), int(state["pos"]), int(state["capacity"])
    order = np.arange(size) if size < cap else (pos + np.arange(size)) % cap
    return {k: np.asarray(state[k])[order] for k in FIELDS}


class DQNControl:
    """Checkpoint store, triggers and the checkpoint to resume from, for one DQN run."""

    def __init__(self, cfg: Config, comm: MPI.Comm, console: Console, timer: PhaseTimer) -> None:
        self.cfg, self.comm, self.console, self.timer = cfg, comm, console, timer
        self.section = cfg.checkpoint
        store = CheckpointStore(comm, cfg, engine=ENGINE)
        if self.section.fresh:
            store.clear()
        self.resumed: Checkpoint | None = store.latest(console.warn) if self.section.enabled else None
        self.store = store if self.section.enabled else None
        self.last_save = time.monotonic()
        self.local = np.zeros(2, dtype=np.int8)
        self.agreed = np.zeros(2, dtype=np.int8)
        self.request: MPI.Request | None = None

    # ------------------------------------------------------------------ triggers
    def _local_flags(self) -> None:
        s = self.section
        due = self.store is not None and s.every_seconds > 0 and time.monotonic() - self.last_save >= s.every_seconds
        self.local[:] = (int(due), int(signals.requested()))

    def step(self, loop: Any) -> None:
        """Called by every rank after each vector step (same count everywhere); may save / raise."""
        if loop.trainer.vec_steps % FLAG_EVERY:
            return
        if self.request is not None:
            with self.timer.phase("wait"):
                # keep serving / taking replies meanwhile: a parameter server must not block here
                wait_yielding(self.request, loop.exchange.poll if loop.scheme != "sync" else None)
            self.request = None
            due, stop = bool(self.agreed[0]), bool(self.agreed[1])
            if due or stop:
                self.save(loop, quiesce=True)
            if stop:
                raise Checkpointed(f"stopped by signal at {loop.global_steps:,} env steps"
                                   + (", checkpoint written" if self.store else ""), saved=self.store is not None)
        self._local_flags()
        self.request = self.comm.Iallreduce(self.local, self.agreed, op=MPI.MAX)

    def after_evaluation(self, loop: Any) -> None:
        """``every_iterations``: save after every N-th evaluation (agreed without messages)."""
        n = self.section.every_iterations
        if self.store is not None and n > 0 and len(loop.curve) % n == 0:
            self.save(loop, quiesce=False)

    def close(self) -> None:
        """Complete the flag reduction in flight (collective: every rank started the same one)."""
        if self.request is not None:
            self.request.Wait()
            self.request = None

    # ------------------------------------------------------------------ save
    def save(self, loop: Any, quiesce: bool) -> None:
        """Write one checkpoint (collective)."""
        if self.store is None:
            return
        if quiesce and loop.scheme == "parameter-server":
            loop.exchange.quiesce()
        with self.timer.phase("io"):
            replicated, per_rank, meta = state_arrays(loop)
            path = self.store.save(loop.global_steps, np.zeros(self.comm.size + 1, dtype=np.int64), {},
                                   per_rank=per_rank, replicated=replicated, meta=meta)
        self.last_save = time.monotonic()
        self.console.info(f"checkpoint: {path}")

    # ------------------------------------------------------------------ resume
    def restore(self, loop: Any) -> None:
        """Load the resumed checkpoint into ``loop`` (collective; no-op when starting fresh)."""
        ck = self.resumed
        if ck is None:
            return
        self.console.info(f"resuming from {ck.path} (step {ck.step}, written by {ck.ranks} rank(s))")
        with self.timer.phase("io"):
            load_state(loop, ck, self.console)


# ---------------------------------------------------------------------- state <-> arrays
def state_arrays(loop: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(replicated, per_rank, meta) of ``loop`` at an agreed (PS: quiesced) point."""
    t = loop.trainer
    t.require_nothing_prepared()
    loop.complete_check()  # a checkpoint holds replicas proven identical
    q = t.flat.gather_params().copy()
    target = t.target_flat.gather_params(np.zeros_like(q))
    loop_state: dict[str, Any] = {
        "curve": [dict(p) for p in loop.curve], "eval_returns": [r.copy() for r in loop.eval_returns],
        "wall_seconds": loop.wall(), "last_eval": list(loop.last_eval), "solved_at": loop.solved_at,
        "evaluated_at": loop.evaluated_at, "ranks": loop.comm.size,
    }
    if loop.scheme == "overlap":
        loop_state["exchange"] = loop.exchange.state_dict()  # completes the reductions in flight
    elif loop.scheme == "parameter-server":
        loop_state["ps_version"] = int(loop.exchange.version)
    replicated = {"q": q, "target": target, "optimizer": pack(_to_numpy(t.optimizer.state_dict())),
                  "loop": pack(loop_state)}
    replay = t.replay.state_dict()
    own: dict[str, Any] = {
        "rng_numpy": t.rng.bit_generator.state, "rng_torch": torch.get_rng_state().numpy().copy(),
        "envs": pickle.dumps(t.vec), "nstep": t.nstep.state_dict(), "obs": t.obs.copy(),
        "episode_return": t.episode_return.copy(), "finished_returns": list(t.finished_returns),
        "vec_steps": t.vec_steps, "updates": t.updates, "loss_sum": t.loss_sum, "loss_count": t.loss_count,
        "num_envs": t.num_envs, "replay_pos": replay["pos"], "replay_size": replay["size"],
        "replay_capacity": replay["capacity"],
    }
    if loop.scheme == "parameter-server":
        own["target"] = target  # workers refresh their targets on their own schedule
        if loop.comm.rank != 0:
            own["ps_local_updates"] = loop.exchange.local_updates
    per_rank = {f"replay_{k}": replay[k] for k in FIELDS} | {"state": pack(own)}
    meta = {"global_steps": loop.global_steps, "updates": t.updates, "scheme": loop.scheme,
            "num_envs": t.num_envs, "evaluations": len(loop.curve)}
    return replicated, per_rank, meta


def _replay_of(ck: Checkpoint, rank: int, own: dict[str, Any]) -> dict[str, Any]:
    return {k: ck.per_rank(f"replay_{k}", rank) for k in FIELDS} | {
        "pos": own["replay_pos"], "size": own["replay_size"], "capacity": own["replay_capacity"]}


# [algo] keys that shape a rank's saved state (replay capacity, n-step windows): they must not change on resume
STATE_KEYS = ("buffer_size", "n_step")


def check_layout(ck: Checkpoint, q: np.ndarray, target: np.ndarray, optimizer: dict[str, Any], size: int,
                 loop: Any) -> None:
    """The checkpoint's network (finite), optimizer and state layout fit this run (same on every rank, so
    agreed)."""
    theirs, ours = ck.config.get("algo", {}), loop.algo
    changed = [f"algo.{k} {theirs.get(k)} -> {getattr(ours, k)}"
               for k in STATE_KEYS if theirs.get(k) != getattr(ours, k)]
    if (ck.meta.get("scheme") == "parameter-server") != (loop.scheme == "parameter-server"):
        changed.append(f"scheme {ck.meta.get('scheme')} -> {loop.scheme}")
    if changed:
        raise BadInput(f"{ck.path}: checkpoint state does not fit this run ({', '.join(changed)}); run with "
                       "--fresh to start over", agreed=True)
    if q.size != size:
        raise BadInput(f"{ck.path}: checkpoint network has {q.size:,} parameters, this run's has {size:,} "
                       "(algo.hidden differs?); run with --fresh to start over", agreed=True)
    bad = [name for name, arr in (("q", q), ("target", target)) if not np.isfinite(arr).all()]
    if bad:
        raise BadInput(f"{ck.path}: checkpoint network ({' and '.join(bad)}) holds non-finite parameters (the run "
                       "had diverged); it cannot be resumed: run with --fresh to start over", agreed=True)
    if len(optimizer["param_groups"][0]["params"]) != 1:
        raise BadInput(f"{ck.path}: checkpoint holds a per-tensor optimizer state from an older hpcql; "
                       "run with --fresh to start over", agreed=True)


def load_state(loop: Any, ck: Checkpoint, console: Console) -> None:
    """Restore ``loop`` from ``ck``: exactly under the same layout, redistributed otherwise."""
    comm, t, cfg = loop.comm, loop.trainer, loop.cfg
    rank, size = comm.rank, comm.size
    # ---- replicated: network, target, optimizer, curve
    q, optimizer = np.asarray(ck.replicated("q"), dtype=np.float32), unpack(ck.replicated("optimizer"))
    target = ck.replicated("target")
    check_layout(ck, q, target, optimizer, t.flat.size, loop)
    t.flat.scatter_params(q)
    t.set_target(target)
    t.load_optimizer_state(optimizer)
    ls = unpack(ck.replicated("loop"))
    loop.curve = [dict(p) for p in ls["curve"]]
    loop.eval_returns = [np.asarray(r) for r in ls["eval_returns"]]
    loop.wall_offset, loop.t0 = float(ls["wall_seconds"]), time.perf_counter()
    loop.last_eval = tuple(ls["last_eval"])
    loop.solved_at = tuple(ls["solved_at"]) if ls["solved_at"] is not None else None
    if loop.scheme == "overlap" and "exchange" in ls:
        ex = ls["exchange"]
        if int(ls["ranks"]) != size:  # pending sums of the old rank count -> sums of ours (same average)
            ex = ex | {"grads": [g * np.float32(size / int(ls["ranks"])) for g in ex["grads"]]}
        loop.exchange.load_state_dict(ex)
    elif loop.scheme == "parameter-server" and "ps_version" in ls:
        loop.exchange.version = int(ls["ps_version"])
    global_steps = int(ck.meta["global_steps"])
    same = ck.ranks == size and int(ck.meta["num_envs"]) == t.num_envs
    if same:
        own = unpack(ck.per_rank("state", rank))
        _load_rank_state(t, own, envs=True)
        t.replay.load_state_dict(_replay_of(ck, rank, own))
        loop.evaluated_at = ls["evaluated_at"]
        if loop.scheme == "parameter-server":
            t.set_target(own["target"])
            if rank != 0:
                loop.exchange.local_updates = int(own["ps_local_updates"])
                loop.exchange.version = int(ls["ps_version"])
        return
    # ---- another rank count (or env count): redistribute
    olds = [unpack(ck.per_rank("state", r)) for r in range(ck.ranks)]
    reuse = rank < ck.ranks and int(olds[rank]["num_envs"]) == t.num_envs
    if reuse:
        _load_rank_state(t, olds[rank], envs=True)
        if loop.scheme == "parameter-server":
            t.set_target(olds[rank]["target"])
    else:
        t.rng = np.random.default_rng([cfg.run.seed, rank, global_steps])
        obs, _ = t.vec.reset(seed=rank_env_seeds(cfg.run.seed + global_steps, rank, t.num_envs))
        t.obs = np.asarray(obs, dtype=np.float32).reshape(t.num_envs, -1)
        t.updates = int(olds[0]["updates"]) if loop.scheme != "parameter-server" else 0
    t.loss_sum, t.loss_count, t.finished_returns = 0.0, 0, []
    t.vec_steps = global_steps // loop.steps_per_vec
    loop.evaluated_at = -1
    if loop.scheme == "parameter-server" and rank != 0:
        loop.exchange.local_updates = t.updates
        loop.exchange.version = int(ls.get("ps_version", 0))
    # replay: new rank r takes transition i of old shard k when (i + k) % size == r; merged oldest first
    parts, ages = [], []
    for k in range(ck.ranks):
        chrono = chronological(_replay_of(ck, k, olds[k]))
        n = len(chrono["action"])
        mine = np.flatnonzero((np.arange(n) + k) % size == rank)
        parts.append({f: chrono[f][mine] for f in FIELDS})
        ages.append(n - mine)  # 1 = newest of its shard
    age = np.concatenate(ages) if ages else np.zeros(0, dtype=np.int64)
    order = np.argsort(-age, kind="stable")
    merged = {f: np.concatenate([p[f] for p in parts])[order] for f in FIELDS}
    total = len(age)
    dropped = max(0, total - t.replay.capacity)
    t.replay.pos, t.replay.size = 0, 0
    t.replay.add({f: merged[f][dropped:] for f in FIELDS})
    # ---- report what changed, on rank 0
    counts = comm.gather((total, dropped, reuse))
    if rank == 0:
        old_total = sum(int(o["replay_size"]) for o in olds)
        old_envs = sorted({int(o["num_envs"]) for o in olds})
        envs = "" if old_envs == [t.num_envs] else f" ({'/'.join(map(str, old_envs))} to {t.num_envs} env(s) per rank)"
        console.info(f"resharding DQN checkpoint from {ck.ranks} to {size} rank(s){envs}: network, target network, "
                     f"optimizer and learning curve restored exactly; {old_total:,} replay transitions "
                     f"redistributed round-robin ({', '.join(f'rank {r}: {c[0]:,}' for r, c in enumerate(counts))})")
        drops = [f"rank {r}: {c[1]:,} oldest transitions over capacity" for r, c in enumerate(counts) if c[1]]
        fresh = [r for r, c in enumerate(counts) if not c[2]]
        lost = [r for r in range(size, ck.ranks)]
        if drops:
            console.warn("resume dropped " + "; ".join(drops))
        if fresh:
            console.warn(f"resume: rank(s) {fresh} start fresh episodes (new env seeds, new RNG streams)")
        if lost:
            n_windows = sum(int(np.sum(olds[r]["nstep"]["count"])) for r in lost)
            console.warn(f"resume dropped the in-progress episodes, {n_windows} pending n-step transitions "
                         f"and RNG streams of old rank(s) {lost}")


def _load_rank_state(t: Any, own: dict[str, Any], envs: bool) -> None:
    t.rng.bit_generator.state = own["rng_numpy"]
    torch.set_rng_state(torch.from_numpy(np.array(own["rng_torch"], dtype=np.uint8)))
    t.nstep.load_state_dict(own["nstep"])
    t.obs = np.array(own["obs"], dtype=np.float32)
    t.episode_return = np.array(own["episode_return"], dtype=np.float64)
    t.finished_returns = [float(x) for x in own["finished_returns"]]
    t.vec_steps, t.updates = int(own["vec_steps"]), int(own["updates"])
    t.loss_sum, t.loss_count = float(own["loss_sum"]), int(own["loss_count"])
    if envs:
        t.vec.close()
        t.vec = pickle.loads(own["envs"])
