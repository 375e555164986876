"""The MLP Q-network, a contiguous flat gradient buffer, and replica checksums."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


def build_mlp(obs_dim: int, num_actions: int, hidden: list[int]) -> nn.Sequential:
    """An MLP ``obs_dim -> hidden... -> num_actions`` with ReLU activations."""
    layers: list[nn.Module] = []
    width = obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_actions))
    return nn.Sequential(*layers)


class FlatBuffer:
    """All parameters (or gradients) of a module as one contiguous float32 host array.

    The hot path of gradient averaging is then a single ``Allreduce`` on ``array``.
    """

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.size = int(sum(self.sizes))
        self.array = np.zeros(self.size, dtype=np.float32)
        self._host = torch.from_numpy(self.array)  # shares memory with array

    def _views(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(tensor, self.sizes))

    def gather_grads(self, out: np.ndarray | None = None) -> np.ndarray:
        """Copy every ``p.grad`` into ``out`` (default: ``self.array``)."""
        host = self._host if out is None else torch.from_numpy(out)
        for view, p in zip(self._views(host), self.params):
            view.copy_(p.grad.reshape(-1))
        return self.array if out is None else out

    def scatter_grads(self, flat: np.ndarray) -> None:
        """Write ``flat`` into every ``p.grad``."""
        host = torch.from_numpy(flat)
        for view, p in zip(self._views(host), self.params):
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(view.view_as(p))

    def gather_params(self, out: np.ndarray | None = None) -> np.ndarray:
        """Copy every parameter into ``out`` (default: ``self.array``)."""
        host = self._host if out is None else torch.from_numpy(out)
        with torch.no_grad():
            for view, p in zip(self._views(host), self.params):
                view.copy_(p.reshape(-1))
        return self.array if out is None else out

    def scatter_params(self, flat: np.ndarray) -> None:
        """Write ``flat`` into the parameters."""
        host = torch.from_numpy(flat)
        with torch.no_grad():
            for view, p in zip(self._views(host), self.params):
                p.copy_(view.view_as(p))


def param_checksum(module: nn.Module) -> tuple[float, str]:
    """(sum of parameters, blake2b digest of their bytes): equal digests mean bit-identical replicas."""
    h = hashlib.blake2b(digest_size=16)
    total = 0.0
    with torch.no_grad():
        for p in module.parameters():
            a = p.detach().cpu().numpy()
            h.update(a.tobytes())
            total += float(a.sum(dtype=np.float64))
    return total, h.hexdigest()


def module_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """``state_dict`` of a module as host numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def module_from_numpy(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load numpy arrays from ``module_to_numpy`` into ``module`` (exact)."""
    device = next(module.parameters()).device
    module.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(device) for k, v in state.items()})
