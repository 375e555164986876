"""The Q-network's forward pass and its Double-DQN Huber-loss gradient in numpy, on the CPU.

``build_mlp``'s network (Linear, ReLU, ..., Linear) evaluated on views of the same flat
float32 arrays that ``FlatBuffer`` gives the torch module: parameters are shared, not
copied, so the torch module, its checksums and its checkpoints see every numpy update.

Why: a CartPole-sized update is some 40 tiny tensor operations. Torch spends about
10 us of dispatch and autograd bookkeeping on each of them on a CPU, numpy about 1 us,
and the backward pass written out by hand needs no graph. The maths is the torch path's
(``ReplicaTrainer.compute_grads``): same loss, same targets, gradients equal to
autograd's up to float32 rounding (tests/test_dqn.py checks them against autograd).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

Layer = tuple[np.ndarray, np.ndarray]  # (weight (out, in), bias (out,)) views


class Batch(NamedTuple):
    """A replay minibatch (``ReplayShard.sample`` fields)."""

    obs: np.ndarray
    action: np.ndarray
    ret: np.ndarray
    next_obs: np.ndarray
    done: np.ndarray
    discount: np.ndarray


class NumpyMLP:
    """``build_mlp(obs_dim, num_actions, hidden)`` on flat float32 arrays in torch's parameter order."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int]) -> None:
        self.dims = [obs_dim, *hidden, num_actions]
        self.size = sum(o * i + o for i, o in zip(self.dims[:-1], self.dims[1:]))

    def layers(self, flat: np.ndarray) -> list[Layer]:
        """(weight, bias) views into ``flat`` (weight_0, bias_0, weight_1, ... like ``module.parameters()``)."""
        if flat.dtype != np.float32 or flat.shape != (self.size,) or not flat.flags.c_contiguous:
            raise ValueError(f"expected a contiguous float32 array of {self.size} parameters")
        out, at = [], 0
        for i, o in zip(self.dims[:-1], self.dims[1:]):
            w = flat[at:at + o * i].reshape(o, i)
            at += o * i
            out.append((w, flat[at:at + o]))
            at += o
        return out

    @staticmethod
    def forward(layers: list[Layer], x: np.ndarray, keep: list[np.ndarray] | None = None,
                progress: Callable[[], None] | None = None) -> np.ndarray:
        """Q-values of the rows of ``x``; every layer's output is appended to ``keep`` when given;
        ``progress`` (if given) is called after each hidden layer."""
        h = x
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            z = h @ w.T
            z += b
            if i < last:
                np.maximum(z, 0.0, out=z)
                if progress is not None:
                    progress()
            if keep is not None:
                keep.append(z)
            h = z
        return h

    def greedy(self, layers: list[Layer], obs: np.ndarray) -> np.ndarray:
        """Greedy actions (lowest index on ties, like ``torch.argmax``)."""
        x = np.ascontiguousarray(obs, dtype=np.float32).reshape(len(obs), -1)
        return self.forward(layers, x).argmax(axis=1)

    @staticmethod
    def stacked_inputs(b: Batch) -> np.ndarray:
        """``[obs; next_obs]`` as one float32 array: the online network sees both in one pass."""
        return np.concatenate([b.obs, b.next_obs]).astype(np.float32, copy=False)

    def target_values(self, target: list[Layer], x: np.ndarray) -> np.ndarray:
        """The target network's Q-values of the next observations (the second half of ``x``)."""
        return self.forward(target, x[len(x) // 2:])

    def td_grads(self, online: list[Layer], target: list[Layer], b: Batch, grads: list[Layer],
                 double_dqn: bool, delta: float, progress: Callable[[], None] | None = None,
                 x: np.ndarray | None = None, q_next_target: np.ndarray | None = None) -> float:
        """Mean Huber loss of the (Double) DQN n-step TD error; its gradient is written into ``grads``.

        Targets ``ret + discount * (1 - done) * Q_target(next_obs, a*)``, with ``a*`` the
        online network's greedy action (Double DQN) or the target's own; no gradient flows
        through them. ``progress`` (if given) is called after each hidden layer of the online
        forward pass, between the forward and backward passes and after each layer of the backward
        pass but the first (the overlap scheme lets MPI
        advance its pending reductions there: MPICH's ``Iallreduce`` moves only inside MPI calls). ``x`` and
        ``q_next_target``, when given, are ``stacked_inputs(b)`` and ``target_values`` computed
        earlier (they do not depend on the online parameters).
        """
        n = len(b.action)
        rows = np.arange(n)
        x = self.stacked_inputs(b) if x is None else x
        acts = [x]
        q_both = self.forward(online, x, acts, progress)  # online Q of obs and next_obs in one pass
        if q_next_target is None:
            q_next_target = self.target_values(target, x)
        if progress is not None:
            progress()
        if double_dqn:
            next_q = q_next_target[rows, q_both[n:].argmax(axis=1)]
        else:
            next_q = q_next_target.max(axis=1)
        y = b.ret + b.discount * (1.0 - b.done) * next_q
        d = q_both[rows, b.action] - y
        ad = np.abs(d)
        loss = float(np.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta)).sum()) / n
        dz = np.zeros((n, self.dims[-1]), dtype=np.float32)
        dz[rows, b.action] = np.clip(d, -delta, delta) / np.float32(n)
        for i in range(len(online) - 1, -1, -1):
            h_in = acts[i][:n]
            gw, gb = grads[i]
            np.matmul(dz.T, h_in, out=gw)
            dz.sum(axis=0, out=gb)
            if i:
                dh = dz @ online[i][0]
                dh *= h_in > 0.0  # ReLU: gradient only where the unit was active
                dz = dh
                if progress is not None:
                    progress()
        return loss
