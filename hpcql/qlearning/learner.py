"""One rank's learning state: its Q shard, ghost max-Q, visit counts, agents, counters.

Everything needed to resume exactly is in ``state_dict()`` (plain numpy arrays);
the communication modes (``sync_loop``, ``async_loop``) only move agents and
ghost values in and out of a ``Learner``.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcql.config import QLearningAlgo
from hpcql.errors import BadInput
from hpcql.mdp.shard import sampled_rewards
from hpcql.partition import owner_of
from hpcql.qlearning.agents import RECORD, Agents, exchange_agents, split_migrants
from hpcql.qlearning.kernels import (NUM_STATS, STEP_KINDS, ST_ABS_TD, ST_MOVED, ST_RESTARTS, ST_UPDATES, advance_agents,
                                     pack_entries, rows_max)
from hpcql.qlearning.rng import seed_key
from hpcql.redistribute import RowMover
from hpcql.tabular.problem import ShardedProblem

COUNTERS = ("updates", "abs_td", "restarts", "moved", "received", "rounds")


def absorbing_states(problem: ShardedProblem) -> np.ndarray:
    """Local states whose every action loops back to the state with probability 1."""
    sh = problem.shard
    A = sh.num_actions
    row_len = np.diff(sh.indptr)
    row_state = sh.row_start + np.arange(sh.n_local * A, dtype=np.int64) // A
    entry_state = np.repeat(row_state, row_len)
    leaving = (sh.indices != entry_state) & (problem.probs > 0)
    rows_leaving = np.bincount(np.repeat(np.arange(sh.n_local * A), row_len), weights=leaving,
                               minlength=sh.n_local * A)
    return (rows_leaving.reshape(sh.n_local, A) == 0).all(axis=1) if sh.n_local else np.zeros(0, dtype=bool)


def start_update_chance(learner: "Learner") -> float:
    """Chance that an episode start can make a Q update (collective, agreed on every rank).

    An episode ends in an absorbing state (the kernel restarts the agent there without an
    update), so a start in one makes no update. Raises ``BadInput`` (agreed) when no
    possible start state can make one: the run would loop forever without updates.
    """
    sh = learner.problem.shard
    starts = learner.start_states
    mine = (starts >= sh.row_start) & (starts < sh.row_stop)
    live = np.array([np.count_nonzero(~learner.absorbing),
                     np.count_nonzero(~learner.absorbing[starts[mine] - sh.row_start])], dtype=np.float64)
    glob = np.zeros_like(live)
    learner.problem.comm.Allreduce(live, glob, op=MPI.SUM)
    f = learner.explore_fraction
    chance = f * glob[0] / sh.num_states + (1.0 - f) * glob[1] / starts.size
    if chance <= 0.0:
        what = f"every state in start_states {starts.tolist()} is" if f == 0.0 else "every state is"
        raise BadInput(f"[algo] starts / start_states ({learner.algo.starts}): {what} absorbing (all its actions "
                       "loop back to it, so episodes end there): no episode can make a Q update", agreed=True)
    return float(chance)


class Learner:
    """Q-learning state of one rank; ``advance`` runs the agents, migrants come back out."""

    def __init__(self, problem: ShardedProblem, algo: QLearningAlgo, seed: int) -> None:
        sh = problem.shard
        comm = problem.comm
        bad = [s for s in algo.start_states if s >= sh.num_states]
        if bad:
            raise BadInput(f"[algo] start_states: state {bad[0]} out of range [0, {sh.num_states})", agreed=True)
        if not algo.start_states:
            raise BadInput("[algo] start_states: needs at least one state", agreed=True)
        self.problem = problem
        self.algo = algo
        self.seed_key = seed_key(seed)
        self.absorbing = absorbing_states(problem)
        self.q = np.full((sh.n_local, sh.num_actions), float(algo.q_init))
        # absorbing states are never updated (episodes end there): start them at their exact value
        self.q[self.absorbing] = sh.rewards[self.absorbing] / (1.0 - problem.gamma)
        self.visits = np.zeros(self.q.shape, dtype=np.int64)
        self.visits_mark = np.zeros(sh.n_local, dtype=np.int64)
        """Updates per state at the last load-balance check (see ``window_work``)."""
        self._bind(problem)
        self.agents = Agents.create(comm.rank * algo.agents_per_rank, algo.agents_per_rank)
        self.total_agents = algo.agents_per_rank * comm.size
        self.start_states = np.asarray(algo.start_states, dtype=np.int64)
        self.explore_fraction = {"exploring": 1.0, "fixed": 0.0}.get(algo.starts, algo.exploring_fraction)
        self.stats = np.zeros(NUM_STATS)
        self.received = 0
        self.rounds = 0

    def _bind(self, problem: ShardedProblem) -> None:
        """Take ``problem``'s rows: packed transition entries, ghost vector, boundary rows."""
        sh = problem.shard
        self.problem = problem
        self.entries, self.reward_table = pack_entries(problem.probs, sampled_rewards(sh), problem.cols)
        self.width = problem.kernels.width  # row_width(sh.indptr), found when the problem was built
        self.vmax_ext = problem.new_ext()
        self.boundary = np.unique(problem.halo.send_flat).astype(np.int64)  # local rows other ranks read
        self.refresh_local_max()

    # ------------------------------------------------------------------ hot path
    def advance(self, max_steps: int, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        """Run every local agent up to ``max_steps`` steps.

        Returns the migrants' records sorted by owner rank and the count per rank;
        they are no longer part of this rank's agents.
        """
        p, sh, a, algo = self.problem, self.problem.shard, self.agents, self.algo
        moved = np.zeros(len(a), dtype=np.bool_)
        advance_agents(a.ids, a.states, a.ctrs, a.ep_steps, moved, max_steps, self.seed_key,
                       self.q, self.visits, self.vmax_ext, sh.indptr, self.width, self.entries,
                       self.reward_table, p.layout.ghost_states,
                       self.absorbing, sh.row_start, p.gamma, epsilon, algo.alpha, algo.omega,
                       STEP_KINDS[algo.step_size], self.explore_fraction, self.start_states, sh.num_states,
                       algo.max_episode_steps, self.stats)
        self.rounds += 1
        self.agents, records, counts = split_migrants(a, moved, p.offsets)
        return records, counts

    def receive(self, records: np.ndarray) -> None:
        """Append arriving agents (records in arrival order)."""
        if records.size:
            incoming = Agents.unpack(records)
            self.received += len(incoming)
            self.agents = Agents.concat([self.agents, incoming])

    def refresh_local_max(self) -> None:
        """vmax_ext[s] = max_a Q(s, a) for the local states the halo sends to other ranks.

        Only those: the kernel reads local successors' max from Q itself, so refreshing the
        whole shard every round (as it once did) cost up to a fifth of an async run.
        """
        rows_max(self.q, self.boundary, self.vmax_ext)

    # ------------------------------------------------------------------ load balance
    def window_work(self) -> np.ndarray:
        """Updates made at each local state since the last ``reset_window``."""
        return self.visits.sum(axis=1) - self.visits_mark

    def reset_window(self) -> None:
        self.visits_mark = self.visits.sum(axis=1)

    def repartition(self, problem: ShardedProblem, mover: RowMover) -> None:
        """Move to ``problem``'s partition: rows through ``mover``, agents to their new owners (collective).

        Agents not placed yet stay. Arrivals are appended in source-rank order, so the
        result is deterministic; the migration counters are untouched (nothing is in flight).
        """
        self.q = mover.rows(self.q)
        self.visits = mover.rows(self.visits)
        self.visits_mark = mover.rows(self.visits_mark)
        self.absorbing = mover.rows(self.absorbing)
        self._bind(problem)
        a = self.agents
        away = (a.states >= 0) & (owner_of(a.states, problem.offsets) != problem.comm.rank)
        stay, records, counts = split_migrants(a, away, problem.offsets)
        self.agents = Agents.concat([stay, Agents.unpack(exchange_agents(problem.comm, records, counts))])
        problem.halo.exchange(self.vmax_ext)

    # ------------------------------------------------------------------ reporting
    @property
    def updates(self) -> int:
        return int(self.stats[ST_UPDATES])

    def counters(self) -> np.ndarray:
        """Cumulative local counters in ``COUNTERS`` order (float64, for reductions)."""
        s = self.stats
        return np.array([s[ST_UPDATES], s[ST_ABS_TD], s[ST_RESTARTS], s[ST_MOVED], self.received, self.rounds])

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume this rank exactly (copies, plain numpy arrays)."""
        a = self.agents
        return {
            "q": self.q.copy(),
            "visits": self.visits.copy(),
            "vmax_ext": self.vmax_ext.copy(),
            "agent_records": a.pack().reshape(-1, RECORD),
            "stats": self.stats.copy(),
            "received": np.array(self.received, dtype=np.int64),
            "rounds": np.array(self.rounds, dtype=np.int64),
            "visits_mark": self.visits_mark.copy(),
            "row_range": np.array([self.problem.shard.row_start, self.problem.shard.row_stop], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from ``state_dict()`` of the same shard."""
        rows = np.array([self.problem.shard.row_start, self.problem.shard.row_stop], dtype=np.int64)
        if not np.array_equal(np.asarray(state["row_range"]), rows) or state["q"].shape != self.q.shape:
            raise BadInput(f"q-learning state for rows {state['row_range']} does not fit shard {rows}")
        self.q[...] = state["q"]
        self.visits[...] = state["visits"]
        self.visits_mark[...] = state["visits_mark"]
        self.vmax_ext[...] = state["vmax_ext"]
        self.agents = Agents.unpack(state["agent_records"])
        self.stats[...] = state["stats"]
        self.received = int(state["received"])
        self.rounds = int(state["rounds"])
