"""Adam in numpy, in place on a torch Adam optimizer's own state tensors (CPU).

The step is ``torch.optim.Adam``'s (no weight decay, no AMSGrad): the moments and the
step count live in ``optimizer.state[param]`` and are updated through numpy views, so
``optimizer.state_dict()`` (checkpoints) is the same whichever engine stepped, and a
run may resume on the other engine. One step is ten vector operations with no
allocation, against some 200 us of ``Optimizer.step`` overhead for a small network.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class NumpyAdam:
    """Steps ``param`` (a flat CPU tensor) with its ``.grad``, using ``optimizer``'s hyperparameters and state."""

    def __init__(self, optimizer: torch.optim.Adam, param: torch.Tensor) -> None:
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("NumpyAdam implements plain Adam only (no weight decay, AMSGrad or maximize)")
        self.optimizer, self.param = optimizer, param
        self.p = param.data.numpy()
        self.g = param.grad.numpy()
        self.tmp = np.empty_like(self.p)
        self.denom = np.empty_like(self.p)
        self.bind()

    def bind(self) -> None:
        """(Re)attach to the optimizer's state tensors, creating them as torch would; call after loading state."""
        state = self.optimizer.state[self.param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(self.param.data)
            state["exp_avg_sq"] = torch.zeros_like(self.param.data)
        self.step_count = state["step"].numpy()
        self.m = state["exp_avg"].numpy()
        self.v = state["exp_avg_sq"].numpy()

    def step(self) -> None:
        """One Adam step of the parameter with its current gradient."""
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        self.step_count[...] += 1
        t = float(self.step_count)
        g, m, v, tmp, denom = self.g, self.m, self.v, self.tmp, self.denom
        np.subtract(g, m, out=tmp)  # m <- m + (1 - beta1) (g - m)   (torch: lerp)
        tmp *= np.float32(1.0 - beta1)
        m += tmp
        np.multiply(g, g, out=tmp)  # v <- beta2 v + (1 - beta2) g^2
        tmp *= np.float32(1.0 - beta2)
        v *= np.float32(beta2)
        v += tmp
        np.sqrt(v, out=denom)  # p <- p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
        denom *= np.float32(1.0 / math.sqrt(1.0 - beta2 ** t))
        denom += np.float32(eps)
        np.divide(m, denom, out=tmp)
        tmp *= np.float32(lr / (1.0 - beta1 ** t))
        self.p -= tmp
