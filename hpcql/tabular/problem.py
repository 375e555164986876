"""A sharded tabular problem: this rank's rows, its halo plan and the discount."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from mpi4py import MPI

from hpcql.config import Config, effective_gamma
from hpcql.halo import GhostLayout, HaloExchange, ghost_layout
from hpcql.mdp.shard import MdpShard
from hpcql.mdp.sources import build_shard
from hpcql.redistribute import RowMover
from hpcql.tabular.kernels import Kernels, kernels_for_rows, scattered_gathers
from hpcql.tabular.tiles import TILES_MIN_VALUES, Tiles, build_tiles, row_block_for, tiled_sweep_range


@dataclass
class ShardedProblem:
    """Everything a solver needs on one rank; ``cols`` index the extended vector."""

    comm: MPI.Comm
    shard: MdpShard
    offsets: np.ndarray
    layout: GhostLayout
    halo: HaloExchange
    cols: np.ndarray
    probs: np.ndarray
    gamma: float
    kernels: Kernels
    """Bellman kernels for this shard's row layout (fixed-width rows when every row has the same count;
    prefetch hints when its gathers are scattered)."""
    tiles: Tiles | None = None
    """The entries in column-blocked tiles (``use_tiles``): ``sweep_range`` then sweeps them."""

    @property
    def n_local(self) -> int:
        return self.shard.n_local

    @property
    def n_ext(self) -> int:
        return self.shard.n_local + self.halo.n_ghost

    @property
    def global_nnz(self) -> int:
        return int(self.comm.allreduce(self.shard.nnz))

    def new_ext(self) -> np.ndarray:
        """A zeroed extended vector ``[local | ghosts]``."""
        return np.zeros(self.n_ext, dtype=np.float64)

    # ---- the Bellman kernels on this shard's rows (see ``hpcql.tabular.kernels``)
    def sweep_range(self, v_ext: np.ndarray, v_out: np.ndarray, policy_out: np.ndarray,
                    reverse: bool = False) -> tuple[float, float]:
        """Bellman optimality sweep; (min, max) signed change; greedy actions into ``policy_out``.

        On tiles (``use_tiles``) the sweep is Jacobi only: ``v_out`` not ``v_ext``, forwards.
        """
        sh = self.shard
        if self.tiles is not None:
            if reverse or v_out is v_ext:
                raise ValueError("a tiled sweep is Jacobi only (forwards, v_out separate from v_ext)")
            return tiled_sweep_range(*self.tiles.sweep_args(), sh.rewards, v_ext, v_out, self.gamma, policy_out)
        return self.kernels.bellman_sweep_range(sh.indptr, self.cols, self.probs, sh.rewards, v_ext, v_out,
                                                self.gamma, policy_out, reverse)

    def sweep(self, v_ext: np.ndarray, v_out: np.ndarray, policy_out: np.ndarray, reverse: bool = False) -> float:
        """Bellman optimality sweep; largest |change|."""
        sh = self.shard
        return self.kernels.bellman_sweep(sh.indptr, self.cols, self.probs, sh.rewards, v_ext, v_out, self.gamma,
                                          policy_out, reverse)

    def policy_sweep(self, v_ext: np.ndarray, v_out: np.ndarray, policy: np.ndarray, reverse: bool = False) -> float:
        """Evaluation sweep of ``policy``; largest |change|."""
        sh = self.shard
        return self.kernels.policy_sweep(sh.indptr, self.cols, self.probs, sh.rewards, v_ext, v_out, self.gamma,
                                         policy, reverse)

    def policy_matvec(self, x_ext: np.ndarray, policy: np.ndarray, y: np.ndarray) -> None:
        """y = (I - gamma P^pi) x on the local rows."""
        self.kernels.policy_matvec(self.shard.indptr, self.cols, self.probs, x_ext, self.gamma, policy, y)

    def q_values(self, v_ext: np.ndarray, q_out: np.ndarray) -> None:
        """Q(s, a) on the local rows."""
        sh = self.shard
        self.kernels.q_values(sh.indptr, self.cols, self.probs, sh.rewards, v_ext, self.gamma, q_out)

    def use_tiles(self, layout: str = "auto") -> bool:
        """Lay the entries out in tiles for ``sweep_range`` (Jacobi sweeps); True if it did.

        ``layout``: ``tiles``, ``rows``, or ``auto`` (tiles where, on any rank, the gathers are
        scattered, see ``kernels.scattered_gathers``, over at least ``TILES_MIN_VALUES`` values;
        collective). The tiles are a second copy of the entries (12 bytes each with float64
        probabilities); the rows stay for the final Q values.
        """
        sh = self.shard
        if layout == "rows" or row_block_for(sh.num_actions) == 0:
            return False
        if layout == "auto":  # one choice for every rank (collective), so all sum in the same order
            wide = sh.n_local + self.layout.ghost_states.size >= TILES_MIN_VALUES
            scattered = wide and scattered_gathers(sh.indptr, self.cols, sh.num_actions)
            if not self.comm.allreduce(scattered, op=MPI.LOR):
                return False
        self.tiles = build_tiles(sh.indptr, self.cols, self.probs, self.layout.ghost_states, sh.row_start,
                                 sh.num_states, sh.num_actions)
        return True

    def load_kernel(self, name: str) -> None:
        """Load sweep kernel ``name`` (``bellman_sweep_range`` or ``bellman_sweep``: the same arguments)
        for the solvers' argument types now, from numba's disk cache or by compiling it.

        The first load in a process also starts numba's compiler (about 0.5 s here); done at set-up,
        that is not timed as the first sweep's compute. Types only: no sweep runs.
        """
        sh = self.shard
        v, pol = np.zeros(1), np.zeros(1, dtype=np.int64)  # the solvers' vector and policy types
        if name == "bellman_sweep_range" and self.tiles is not None:
            args = (*self.tiles.sweep_args(), sh.rewards, v, v, self.gamma, pol)
            tiled_sweep_range.compile(tuple(numba.typeof(a) for a in args))
            return
        args = (sh.indptr, self.cols, self.probs, sh.rewards, v, v, self.gamma, pol, False)
        getattr(self.kernels, name).compile(tuple(numba.typeof(a) for a in args))

    def stop_threshold(self, tol: float) -> float:
        """Sup-norm change below which the greedy policy is tol-optimal."""
        return tol * (1.0 - self.gamma) / (2.0 * self.gamma)


def make_problem(shard: MdpShard, offsets: np.ndarray, gamma: float, comm: MPI.Comm,
                 float32: bool = False) -> ShardedProblem:
    """Plan the halo for ``shard`` (collective)."""
    layout = ghost_layout(shard.indices, offsets, comm.rank)
    halo = HaloExchange(comm, layout, offsets)
    probs = shard.probs.astype(np.float32 if float32 else np.float64)
    return ShardedProblem(comm, shard, offsets, layout, halo, layout.local_cols, probs, gamma,
                          kernels_for_rows(shard.indptr, layout.local_cols, shard.num_actions))


def build_problem(cfg: Config, comm: MPI.Comm) -> ShardedProblem:
    """Build the shard from ``[env]`` and plan its halo (collective)."""
    shard, offsets = build_shard(cfg, comm)
    gamma = effective_gamma(cfg, shard.discount)
    return make_problem(shard, offsets, gamma, comm, cfg.algo.float32)


def repartition(problem: ShardedProblem, offsets: np.ndarray) -> tuple[ShardedProblem, RowMover]:
    """The same problem under partition ``offsets``: MDP rows moved, halo planned again (collective).

    Returns the new problem and the mover, for moving other row-sharded arrays the same way
    (the mover needs no halo: the old problem's is freed here).
    """
    mover = RowMover(problem.comm, problem.offsets, offsets)
    shard = mover.shard(problem.shard)
    new = make_problem(shard, np.asarray(offsets, dtype=np.int64), problem.gamma, problem.comm,
                       problem.probs.dtype == np.float32)
    problem.halo.free()
    return new, mover
