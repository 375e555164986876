"""The per-rank DQN actor/learner (one replica) with an exact, numpy-only ``state_dict``."""

from __future__ import annotations

import copy
import pickle
from collections import deque
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from hpcql.config import DQNAlgo, GymEnv
from hpcql.dqn.envs import make_vector_env, rank_env_seeds
from hpcql.dqn.network import FlatBuffer, build_mlp, module_from_numpy, module_to_numpy
from hpcql.dqn.nstep import NStepAccumulator
from hpcql.dqn.numpy_adam import NumpyAdam
from hpcql.dqn.numpy_mlp import Batch, NumpyMLP
from hpcql.dqn.replay import ReplayShard
from hpcql.vector_allreduce import RowSum

STATE_VERSION = 2  # 2: the optimizer holds one flat parameter


class Prepared(NamedTuple):
    """The next update's minibatch, drawn early (``ReplicaTrainer.prepare_batch``)."""

    batch: dict[str, np.ndarray]
    x: np.ndarray | None  # numpy engine: ``NumpyMLP.stacked_inputs``
    q_next_target: np.ndarray | None  # numpy engine: the target network's values of next_obs
    target_version: int  # ``ReplicaTrainer.target_version`` when they were computed


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def _to_torch(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    return obj


class ReplicaTrainer:
    """One rank's envs, replay shard, Q-network replica, target network and optimizer.

    Communication is not its business: ``compute_grads`` fills ``flat.array`` (or a reducer's
    slot) with the local gradient, the caller averages it however the mode says (possibly
    leaving the sum to ``apply_grads``, as a ``RowSum``), ``apply_grads`` steps.
    """

    def __init__(self, algo: DQNAlgo, env_cfg: GymEnv, obs_dim: int, num_actions: int, gamma: float,
                 seed: int, rank: int, device: torch.device) -> None:
        self.algo, self.gamma, self.device = algo, gamma, device
        self.num_envs, self.num_actions = env_cfg.num_envs, num_actions
        torch.manual_seed(seed)  # the same initial weights everywhere (rank 0's are broadcast anyway)
        self.q = build_mlp(obs_dim, num_actions, algo.hidden).to(device)
        self.target = copy.deepcopy(self.q)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.flat = FlatBuffer(self.q)
        self.target_flat = FlatBuffer(self.target, grads=False)
        # one flat parameter, fused: one kernel per step; clipping and zero_grad also touch one
        # tensor (no measurable change in update time on a 2-core CPU at [256, 256])
        self.optimizer = torch.optim.Adam([self.flat.param], lr=algo.lr, fused=True)
        self.engine = "numpy" if device.type == "cpu" and algo.engine in ("auto", "numpy") else "torch"
        if self.engine == "numpy":  # numpy views of the same memory (see numpy_mlp)
            self.np_net = NumpyMLP(obs_dim, num_actions, algo.hidden)
            self.np_online = self.np_net.layers(self.flat.param.data.numpy())
            self.np_target = self.np_net.layers(self.target_flat.param.data.numpy())
            self.np_grads: dict[int, tuple[np.ndarray, list]] = {}  # buffer address -> (buffer, views)
            self.np_adam = NumpyAdam(self.optimizer, self.flat.param)
        self.replay = ReplayShard(algo.buffer_size, obs_dim)
        self.nstep = NStepAccumulator(env_cfg.num_envs, algo.n_step, gamma, obs_dim)
        self.rng = np.random.default_rng(seed + rank)
        self.vec = make_vector_env(env_cfg)
        obs, _ = self.vec.reset(seed=rank_env_seeds(seed, rank, env_cfg.num_envs))
        self.obs = np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1)
        self.vec_steps = 0
        self.updates = 0
        self.episode_return = np.zeros(self.num_envs)
        self.finished_returns: list[float] = []  # training episodes finished since the last drain
        self.loss_sum = 0.0
        self.loss_count = 0
        self.target_version = 0  # bumped whenever the target network changes
        self.prepared: deque[Prepared] = deque()  # minibatches drawn ahead, oldest first

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations."""
        if self.engine == "numpy":
            return self.np_net.greedy(self.np_online, obs)
        q = self.q(torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(len(obs), -1))
        return q.argmax(dim=1).cpu().numpy()

    def act(self, epsilon: float) -> None:
        """One epsilon-greedy vector step; store the completed n-step transitions."""
        explore = self.rng.random(self.num_envs) < epsilon
        random_actions = self.rng.integers(0, self.num_actions, size=self.num_envs)
        actions = np.where(explore, random_actions, self.greedy(self.obs))
        next_obs, reward, terminated, truncated, info = self.vec.step(actions)
        next_obs = np.asarray(next_obs, dtype=np.float32).reshape(self.num_envs, -1)
        ended = np.logical_or(terminated, truncated)
        real_next = next_obs
        if ended.any():
            real_next = next_obs.copy()
            for e in np.flatnonzero(ended):
                real_next[e] = np.asarray(info["final_obs"][e], dtype=np.float32).reshape(-1)
        self.replay.add(self.nstep.push(self.obs, actions, reward, real_next, terminated, truncated))
        self.episode_return += reward
        for e in np.flatnonzero(ended):
            self.finished_returns.append(float(self.episode_return[e]))
            self.episode_return[e] = 0.0
        self.obs = next_obs
        self.vec_steps += 1

    # ------------------------------------------------------------------ learning
    def prepare_batch(self, limit: int = 1) -> bool:
        """Draw one more upcoming update's minibatch now, with (numpy engine) the target network's
        values of its next observations, unless ``limit`` are drawn already; whether it drew one.

        That is the part of an update that does not depend on the online parameters, for a rank
        that would otherwise wait for the others' gradients. Only draw ahead for updates that
        come before anything else uses ``rng`` (no acting in between: ``limit`` <= the updates
        left in the training round): the draws then keep their order and every update is bitwise
        the same. A target refresh in between only makes ``compute_grads`` recompute the target values.
        """
        if len(self.prepared) >= limit:
            return False
        b = self.replay.sample(self.rng, self.algo.batch_size)
        x = q_next_target = None
        if self.engine == "numpy":
            x = self.np_net.stacked_inputs(Batch(**b))
            q_next_target = self.np_net.target_values(self.np_target, x)
        self.prepared.append(Prepared(b, x, q_next_target, self.target_version))
        return True

    def compute_grads(self, progress: Callable[[], None] | None = None,
                      into: np.ndarray | None = None) -> np.ndarray:
        """Double-DQN n-step Huber loss on a local minibatch; returns the array its gradient is in.

        That is ``into`` when given on the numpy engine (a reducer's slot: posted without a copy),
        else ``flat.array``. ``progress`` is called midway (before the backward pass): the overlap
        scheme's MPI progress. The minibatch is the oldest one ``prepare_batch`` drew, if any is left.
        """
        prep = self.prepared.popleft() if self.prepared else None
        b = prep.batch if prep is not None else self.replay.sample(self.rng, self.algo.batch_size)
        if self.engine == "numpy":
            x = q_next_target = None
            if prep is not None:
                x = prep.x
                if prep.target_version == self.target_version:
                    q_next_target = prep.q_next_target
            out = self.flat.array if into is None else into
            loss = self.np_net.td_grads(self.np_online, self.np_target, Batch(**b), self._grad_layers(out),
                                        self.algo.double_dqn, self.algo.huber_delta, progress, x, q_next_target)
            self.loss_sum += loss
            self.loss_count += 1
            return out
        t = {k: torch.as_tensor(v, device=self.device) for k, v in b.items()}
        q = self.q(t["obs"]).gather(1, t["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_target = self.target(t["next_obs"])
            if self.algo.double_dqn:
                best = self.q(t["next_obs"]).argmax(dim=1, keepdim=True)
                next_q = next_target.gather(1, best).squeeze(1)
            else:
                next_q = next_target.max(dim=1).values
            y = t["ret"] + t["discount"] * (1.0 - t["done"]) * next_q
        loss = nn.functional.huber_loss(q, y, delta=self.algo.huber_delta)
        if progress is not None:
            progress()
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.loss_sum += float(loss.item())
        self.loss_count += 1
        return self.flat.gather_grads()

    def _grad_layers(self, out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The numpy engine's (weight, bias) gradient views into ``out`` (made once per buffer)."""
        key = out.__array_interface__["data"][0]
        if key not in self.np_grads:
            self.np_grads[key] = (out, self.np_net.layers(out))  # the array kept alive with its views
        return self.np_grads[key][1]

    def apply_grads(self, grad: np.ndarray | RowSum, progress: Callable[[], None] | None = None) -> None:
        """Clip and apply an (averaged) flat gradient; refresh the target network on schedule.

        ``grad``: an array, or a reduction still in the reducer's slots (``RowSum``): the numpy
        engine sums it inside its clipping and Adam passes, torch sums it into ``flat.array`` first.
        ``progress``: called between the numpy engine's clipping and Adam passes."""
        if self.engine == "numpy":
            self.np_adam.step(grad if isinstance(grad, RowSum) else RowSum.of(grad), self.algo.max_grad_norm,
                              progress)
        else:
            self.flat.scatter_grads(grad.into(self.flat.array) if isinstance(grad, RowSum) else grad)
            self.flat.clip_grads(self.algo.max_grad_norm)
            self.optimizer.step()
        self.updates += 1
        if self.updates % self.algo.target_update_every == 0:
            self.sync_target()

    def require_nothing_prepared(self) -> None:
        """Raise when minibatches drawn ahead are pending: saving then would lose their draws."""
        if self.prepared:
            raise RuntimeError("saving state with a prepared minibatch pending (save between training rounds)")

    def set_target(self, flat: np.ndarray) -> None:
        """Load the target network's parameters (from a checkpoint); minibatches drawn ahead are dropped."""
        self.target_flat.scatter_params(flat)
        self.target_version += 1
        self.prepared.clear()

    def sync_target(self) -> None:
        """Hard copy of the online network into the target network."""
        with torch.no_grad():
            self.target_flat.param.copy_(self.flat.param)
        self.target_version += 1

    def drain_stats(self) -> tuple[float, int, list[float]]:
        """(loss sum, loss count, finished training-episode returns) since the last call."""
        out = (self.loss_sum, self.loss_count, self.finished_returns)
        self.loss_sum, self.loss_count, self.finished_returns = 0.0, 0, []
        return out

    # ------------------------------------------------------------------ exact state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: numpy arrays and plain Python values.

        The vector env (physics state, its RNGs, time limits) is stored pickled as uint8.
        A minibatch drawn ahead (``prepare_batch``) is not part of it: saving one would lose a draw.
        """
        self.require_nothing_prepared()
        rng_state: dict[str, Any] = {
            "numpy": copy.deepcopy(self.rng.bit_generator.state),
            "torch": torch.get_rng_state().numpy().copy(),
        }
        if torch.cuda.is_available():
            rng_state["cuda"] = [s.numpy().copy() for s in torch.cuda.get_rng_state_all()]
        return {
            "version": STATE_VERSION,
            "q": module_to_numpy(self.q),
            "target": module_to_numpy(self.target),
            "optimizer": _to_numpy(self.optimizer.state_dict()),
            "replay": self.replay.state_dict(),
            "nstep": self.nstep.state_dict(),
            "counters": {"vec_steps": self.vec_steps, "updates": self.updates,
                         "loss_sum": self.loss_sum, "loss_count": self.loss_count},
            "episode_return": self.episode_return.copy(),
            "finished_returns": np.asarray(self.finished_returns, dtype=np.float64),
            "obs": self.obs.copy(),
            "envs": np.frombuffer(pickle.dumps(self.vec), dtype=np.uint8).copy(),
            "rng": rng_state,
        }

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load an optimizer ``state_dict`` (numpy arrays), whichever engine saved it."""
        self.optimizer.load_state_dict(_to_torch(state))
        if self.engine == "numpy":
            self.np_adam.bind()  # loading replaced the state tensors

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output exactly."""
        if int(state["version"]) != STATE_VERSION:
            raise ValueError(f"trainer state version {state['version']} != {STATE_VERSION}")
        module_from_numpy(self.q, state["q"])
        module_from_numpy(self.target, state["target"])
        self.target_version += 1
        self.prepared.clear()
        self.load_optimizer_state(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.nstep.load_state_dict(state["nstep"])
        c = state["counters"]
        self.vec_steps, self.updates = int(c["vec_steps"]), int(c["updates"])
        self.loss_sum, self.loss_count = float(c["loss_sum"]), int(c["loss_count"])
        self.episode_return = np.array(state["episode_return"], dtype=np.float64)
        self.finished_returns = [float(x) for x in state["finished_returns"]]
        self.obs = np.array(state["obs"], dtype=np.float32)
        self.vec.close()
        self.vec = pickle.loads(np.asarray(state["envs"], dtype=np.uint8).tobytes())
        self.rng.bit_generator.state = copy.deepcopy(state["rng"]["numpy"])
        torch.set_rng_state(torch.from_numpy(np.array(state["rng"]["torch"], dtype=np.uint8)))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.from_numpy(np.asarray(s)) for s in state["rng"]["cuda"]])
