"""Adam on numpy views, in place on a torch Adam optimizer's own state tensors (CPU).

The step is ``torch.optim.Adam``'s (no weight decay, no AMSGrad): the moments and the
step count live in ``optimizer.state[param]`` and are updated through numpy views, so
``optimizer.state_dict()`` (checkpoints) is the same whichever engine stepped, and a
run may resume on the other engine. One step is one numba pass over the parameter
(``adam_pass``), against some 200 us of ``Optimizer.step`` overhead for a small network
and about 120 us for the same arithmetic as ten numpy vector operations (67,586
parameters, a 2-core EPYC VM): the same bits, a third of the time.

The gradient comes as a ``RowSum``: at several ranks, the reducer's shared slots themselves.
The averaging (adding the rows, dividing) and the gradient clipping run inside the norm pass
and the step pass, so replicas pay no separate summing pass or copy for it.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from numba import njit

from hpcql.dqn.network import clip_coefficient
from hpcql.vector_allreduce import RowSum, sum_rows


_JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@njit(**_JIT)
def _adam_at(i: int, gi: np.float32, p: np.ndarray, m: np.ndarray, v: np.ndarray, c1: np.float32,
             c2: np.float32, beta2: np.float32, cbc2: np.float32, eps: np.float32, clr: np.float32) -> None:
    """``m <- m + (g - m) c1``, ``v <- v beta2 + g^2 c2``, ``p <- p - m / (sqrt(v) cbc2 + eps) clr`` at ``i``.

    Every operand is float32 and every operation rounds to float32 in this order (no fused
    multiply-add: numba does not contract without fastmath), so the bits are those of the
    same steps as numpy vector operations."""
    mi = m[i] + (gi - m[i]) * c1
    vi = v[i] * beta2 + (gi * gi) * c2
    m[i] = mi
    v[i] = vi
    p[i] = p[i] - (mi / (np.sqrt(vi) * cbc2 + eps)) * clr


@njit(**_JIT)
def adam_pass(p: np.ndarray, a: np.ndarray, inv: np.float32, coef: np.float32, m: np.ndarray, v: np.ndarray,
              c1: np.float32, c2: np.float32, beta2: np.float32, cbc2: np.float32, eps: np.float32,
              clr: np.float32) -> None:
    """One Adam step (``_adam_at``) with ``g = (a * inv) * coef``: one gradient row, scaled by an
    exact reciprocal ``inv`` (1 for a gradient already averaged) and the clipping ``coef`` (1: none;
    multiplying by 1 changes no bit). ``error_model="numpy"``: no zero-division branch, so the loop
    vectorises."""
    for i in range(p.size):
        _adam_at(i, (a[i] * inv) * coef, p, m, v, c1, c2, beta2, cbc2, eps, clr)


@njit(**_JIT)
def adam_pass2(p: np.ndarray, a: np.ndarray, b: np.ndarray, inv: np.float32, coef: np.float32, m: np.ndarray,
               v: np.ndarray, c1: np.float32, c2: np.float32, beta2: np.float32, cbc2: np.float32,
               eps: np.float32, clr: np.float32) -> None:
    """``adam_pass`` with ``g = ((a + b) * inv) * coef``: two replicas' gradients averaged in the pass."""
    for i in range(p.size):
        _adam_at(i, ((a[i] + b[i]) * inv) * coef, p, m, v, c1, c2, beta2, cbc2, eps, clr)


@njit(**(_JIT | {"fastmath": True}))
def sq_norm_pass(a: np.ndarray, n: int, inv: np.float32) -> float:
    """The squared L2 norm of ``a[:n] * inv``, accumulated in float32 as BLAS ``sdot`` does
    (``fastmath``: in SIMD lanes, in another order than a plain loop; the norm only decides the
    clipping coefficient, and every rank computes it alike): half the time of a float64 sum."""
    acc = np.float32(0.0)
    for i in range(n):
        g = a[i] * inv
        acc += g * g
    return float(acc)


@njit(**(_JIT | {"fastmath": True}))
def sq_norm_pass2(a: np.ndarray, b: np.ndarray, n: int, inv: np.float32) -> float:
    """``sq_norm_pass`` of ``(a + b) * inv``."""
    acc = np.float32(0.0)
    for i in range(n):
        g = (a[i] + b[i]) * inv
        acc += g * g
    return float(acc)


class NumpyAdam:
    """Steps ``param`` (a flat CPU tensor) with a given gradient, using ``optimizer``'s hyperparameters and state."""

    def __init__(self, optimizer: torch.optim.Adam, param: torch.Tensor) -> None:
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("NumpyAdam implements plain Adam only (no weight decay, AMSGrad or maximize)")
        self.optimizer, self.param = optimizer, param
        self.p = param.data.numpy()
        self.scratch = np.empty_like(self.p)  # a gradient summed here when it cannot be read in place
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

    def _operands(self, grad: RowSum) -> tuple[np.ndarray, np.ndarray | None, np.float32]:
        """``grad`` as ``(a, b, inv)``: the gradient is ``(a + b) * inv`` (``a * inv`` when ``b`` is
        None), with ``inv`` an exact reciprocal. Up to two rows and a power-of-two divisor are read in
        place; more rows are summed into a scratch array first, all but the last (the same order of
        additions), and another divisor divides there (``sum_rows``' bits either way)."""
        rows, n, d = grad.rows, grad.size, grad.divisor
        if math.frexp(d)[0] != 0.5:  # not 2**k: 1/d is not exact
            return grad.into(self.scratch), None, np.float32(1.0)
        if rows.shape[0] > 2:
            sum_rows(rows[:-1], 0, n, self.scratch, 1.0)
            return self.scratch, rows[-1, :n], np.float32(1.0 / d)
        return rows[0, :n], (rows[1, :n] if rows.shape[0] == 2 else None), np.float32(1.0 / d)

    def step(self, grad: RowSum, max_norm: float, progress: Callable[[], None] | None = None) -> float:
        """One Adam step of the parameter with ``grad`` clipped to global L2 norm ``max_norm``
        (``FlatBuffer.clip_grads``' rule); returns the norm before clipping.

        ``grad`` is summed where it lies (a reducer's slots at several ranks): one pass for the
        norm, one for the step, and no averaged copy in between. ``progress`` (if given) is called
        between the two passes (the overlap scheme's MPI progress)."""
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        f = np.float32
        a, b, inv = self._operands(grad)
        n = self.p.size
        norm = math.sqrt(sq_norm_pass(a, n, inv) if b is None else sq_norm_pass2(a, b, n, inv))
        coef = f(min(clip_coefficient(norm, max_norm), 1.0))  # 1: no clipping (and no bit changed)
        if progress is not None:
            progress()
        self.step_count[...] += 1
        t = float(self.step_count)
        # torch: m.lerp_(g, 1 - beta1); v.mul_(beta2).addcmul_(g, g, 1 - beta2);
        # p.addcdiv_(m, v.sqrt() / sqrt(bc2) + eps, -lr / bc1)
        hyper = (f(1.0 - beta1), f(1.0 - beta2), f(beta2), f(1.0 / math.sqrt(1.0 - beta2 ** t)), f(eps),
                 f(lr / (1.0 - beta1 ** t)))
        if b is None:
            adam_pass(self.p, a, inv, coef, self.m, self.v, *hyper)
        else:
            adam_pass2(self.p, a, b, inv, coef, self.m, self.v, *hyper)
        return norm
