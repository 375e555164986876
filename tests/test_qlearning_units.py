"""Sharded Q-learning, single process: RNG, agent packing, kernel, schedules, state_dict."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from hpcql.config import parse_config
from hpcql.console import Console
from hpcql.errors import BadInput
from hpcql.mdp import write_mdp
from hpcql.qlearning.agents import Agents, split_migrants
from hpcql.partition import uniform_partition
from hpcql.qlearning.async_loop import steps_per_agent
from hpcql.qlearning.rebalance import plan_partition
from hpcql.qlearning.learner import Learner, absorbing_states, start_update_chance
from hpcql.qlearning.monitor import TOTALS, T, Monitor, stall_limit
from hpcql.qlearning.rng import seed_key, uniform_array
from hpcql.qlearning.schedules import epsilon_at
from hpcql.tabular.problem import build_problem


def _learner(env: dict, **algo) -> Learner:
    cfg = parse_config({"env": env, "algo": {"name": "q-learning", **algo}})
    return Learner(build_problem(cfg, MPI.COMM_SELF), cfg.algo, cfg.run.seed)


def test_counter_rng_is_uniform_and_pure():
    ids = np.arange(200_000, dtype=np.int64)
    ctrs = np.zeros(ids.size, dtype=np.uint64)
    a, b = np.empty(ids.size), np.empty(ids.size)
    uniform_array(seed_key(3), ids, ctrs, 0, a)
    uniform_array(seed_key(3), ids[::-1].copy(), ctrs, 0, b)
    np.testing.assert_array_equal(a, b[::-1])  # a draw depends on (seed, id, counter, slot) only
    assert abs(a.mean() - 0.5) < 0.005 and abs(a.var() - 1 / 12) < 0.002
    uniform_array(seed_key(3), ids, ctrs + np.uint64(1), 0, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01


def test_pack_unpack_and_split_by_owner():
    ag = Agents.create(10, 6)
    ag.states[:] = [0, 5, 9, 3, 7, 1]
    ag.ctrs[:] = np.array([2**63 + 5, 1, 2, 3, 4, 5], dtype=np.uint64)
    back = Agents.unpack(ag.pack())
    for f in ("ids", "states", "ctrs", "ep_steps"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ag, f))
    moved = np.array([True, False, True, False, True, True])
    stay, records, counts = split_migrants(ag, moved, np.array([0, 4, 8, 10]))
    assert list(stay.ids) == [11, 13]
    assert list(counts) == [2, 1, 1] and list(records[:, 0]) == [10, 15, 14, 12]


def test_epsilon_schedules():
    assert epsilon_at("constant", 0.3, 0.1, 0.5, 0.9) == 0.3
    assert epsilon_at("linear", 1.0, 0.1, 0.5, 0.25) == pytest.approx(0.55)
    assert epsilon_at("linear", 1.0, 0.1, 0.5, 0.8) == pytest.approx(0.1)
    assert epsilon_at("exponential", 1.0, 0.01, 1.0, 0.5) == pytest.approx(0.1)


def test_single_shard_learns_small_gridworld_and_agents_stay_put():
    lr = _learner({"kind": "gridworld", "rows": 6, "cols": 6, "slip": 0.1}, agents_per_rank=64)
    assert absorbing_states(lr.problem).sum() == 1
    for _ in range(300):
        records, counts = lr.advance(32, 0.3)
        assert records.shape[0] == 0 and counts.sum() == 0
    assert len(lr.agents) == 64 and lr.updates > 500_000
    # values reach the start corner (V*(0) is about 0.9); noise may overshoot a little
    assert 0.85 < lr.q.max() < 1.1 and lr.q[0].max() > 0.8


def test_async_work_quantum_keeps_a_rank_with_few_agents_busy():
    assert steps_per_agent(16, 64, 64) == 16 and steps_per_agent(16, 64, 500) == 16
    assert steps_per_agent(16, 64, 4) == 256 and steps_per_agent(16, 64, 3) == 342  # ceil(1024 / 3)
    assert steps_per_agent(16, 64, 0) == 1024
    lr = _learner({"kind": "gridworld", "rows": 30, "cols": 30, "slip": 0.1}, agents_per_rank=64,
                  max_episode_steps=100_000)
    lr.agents = lr.agents.keep(np.arange(64) < 4)
    lr.advance(steps_per_agent(16, 64, len(lr.agents)), 1.0)
    # 4 agents x 256 steps, less the first restart of each (a step that is not an update)
    assert lr.updates == 4 * 255


def test_state_dict_round_trip_resumes_bitwise():
    env = {"kind": "gymnasium-tabular", "id": "FrozenLake-v1", "options": {"map_name": "4x4", "is_slippery": True}}
    a, b = _learner(env, agents_per_rank=16), _learner(env, agents_per_rank=16)
    for _ in range(5):
        a.advance(8, 0.5)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    for _ in range(5):
        a.advance(8, 0.5)
        b.advance(8, 0.5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_outcome_rewards_average_to_the_expected_rewards():
    """Per-outcome rewards: 1 exactly on entering the goal, and sum_k p_k r_k = R(s, a)."""
    from hpcql.config import GridworldEnv, GymTabularEnv
    from hpcql.mdp.gridworld import gridworld_shard
    from hpcql.mdp.gym_tabular import gym_tabular_shard
    from hpcql.mdp.shard import sampled_rewards

    grid = gridworld_shard(GridworldEnv(kind="gridworld", rows=7, cols=9, slip=0.2), 0, 0, 63)
    lake = gym_tabular_shard(GymTabularEnv(kind="gymnasium-tabular", id="FrozenLake-v1",
                                           options={"map_name": "8x8", "is_slippery": True}))
    for sh, goal in ((grid, 62), (lake, 63)):
        rows = np.repeat(np.arange(sh.n_local * sh.num_actions), np.diff(sh.indptr))
        src = rows // sh.num_actions
        expected = np.where((sh.indices == goal) & (src != goal), 1.0, 0.0)
        np.testing.assert_array_equal(sampled_rewards(sh), expected)
        mean = np.bincount(rows, weights=sh.probs * expected, minlength=rows.max() + 1)
        np.testing.assert_allclose(mean.reshape(sh.rewards.shape), sh.rewards, atol=1e-12)
    taxi = gym_tabular_shard(GymTabularEnv(kind="gymnasium-tabular", id="Taxi-v4"))
    real = np.diff(taxi.indptr)[: 500 * 6].sum()  # entries of the 500 real states (a terminal state is added)
    assert set(np.unique(sampled_rewards(taxi)[:real])) == {-10.0, -1.0, 20.0}


def test_q_learning_is_unbiased_near_a_rewarding_goal():
    """Uniform exploration on a slip grid converges to Q* (scipy), also next to the goal.

    Sampling the expected reward R(s, a) with a random successor made the target's noise
    as large as V itself next to the goal, and the max over actions turned it into a
    bias that compounded to Q ~ 2 Q* here.
    """
    import scipy.sparse as sp

    from reference import optimal_values

    lr = _learner({"kind": "gridworld", "rows": 16, "cols": 16, "slip": 0.1}, agents_per_rank=256,
                  step_size="visits", omega=0.7)
    while lr.updates < 8_000_000:
        lr.advance(64, 1.0)
    sh = lr.problem.shard
    P = sp.csr_matrix((sh.probs, sh.indices, sh.indptr), shape=(sh.n_local * 4, sh.n_local))
    v_star, _ = optimal_values(P, sh.rewards, 0.99)
    q_star = sh.rewards + 0.99 * (P @ v_star).reshape(-1, 4)
    assert np.abs(lr.q - q_star).max() < 0.05 * v_star.max(), np.abs(lr.q - q_star).max()


@pytest.mark.parametrize("starts, fraction, at_start", [("fixed", 0.5, 1.0), ("exploring", 0.5, 0.0),
                                                         ("mixed", 0.3, 0.7)])
def test_episode_starts(starts, fraction, at_start):
    lr = _learner({"kind": "gridworld", "rows": 30, "cols": 30}, agents_per_rank=20_000, starts=starts,
                  exploring_fraction=fraction, start_states=[450])
    lr.advance(1, 0.0)  # one step each: the first placement
    share = np.mean(lr.agents.states == 450)
    assert abs(share - at_start) < 0.015, share


def test_plan_partition_balances_the_window_work():
    S, size = 1000, 2
    work = np.zeros(S, dtype=np.int64)
    work[900:] = 100  # every update in the last tenth of the states (agents crowding a goal)
    old = np.array([0, 500, 1000])
    new = plan_partition(work, old, threshold=1.1)
    assert new is not None and new[0] == 0 and new[-1] == S
    floor = 0.01 * work.sum() / S  # rebalance.FLOOR_SHARE of the mean per-state work
    loads = [work[a:b].sum() + floor * (b - a) for a, b in zip(new[:-1], new[1:])]
    assert max(loads) / (sum(loads) / size) < 1.01  # within one state's work of even
    assert 900 < new[1] < 1000
    # already balanced (within the threshold): keep the partition
    assert plan_partition(np.ones(S, dtype=np.int64), old, threshold=1.1) is None
    assert plan_partition(np.zeros(S, dtype=np.int64), old, threshold=1.1) is None  # no work seen


def test_plan_partition_never_empties_a_block():
    work = np.zeros(10, dtype=np.int64)
    work[8:] = 10**6  # two states do all the work, and both sit on the last of three ranks
    new = plan_partition(work, uniform_partition(10, 3), threshold=1.1)
    assert new is not None and new.tolist() == [0, 8, 9, 10]  # each busy state alone, rank 0 the rest
    work[8] = 0  # one state does all: no cut can lower the busiest load, so keep the partition
    assert plan_partition(work, uniform_partition(10, 3), threshold=1.1) is None


@pytest.mark.parametrize("float32", [False, True])
def test_packed_entries_hold_the_model_exactly(float32):
    """Each record gives back its entry's probability, extended column and outcome reward (via the table)."""
    from hpcql.mdp.shard import sampled_rewards

    learner = _learner({"kind": "gymnasium-tabular", "id": "Taxi-v4"}, float32=float32)
    p, sh = learner.problem, learner.problem.shard
    e, table = learner.entries, learner.reward_table
    assert e.dtype.itemsize == (12 if float32 else 16)
    np.testing.assert_array_equal(table[e["ri"]], sampled_rewards(sh))
    np.testing.assert_array_equal(e["p"], sh.probs.astype(np.float32 if float32 else np.float64))
    np.testing.assert_array_equal(e["c"], p.cols)
    np.testing.assert_array_equal(table, [-10.0, -1.0, 0.0, 20.0])  # 0: the added terminal state's self-loop


def test_fixed_width_rows_learn_bitwise_like_general_csr_rows():
    """The gridworld's rows all have 3 entries: the kernel's row*width path must match the indptr path."""
    env = {"kind": "gridworld", "rows": 12, "cols": 12, "slip": 0.2}
    runs = []
    for width in (None, 0):
        learner = _learner(env, agents_per_rank=64)
        assert learner.width == 3
        if width is not None:
            learner.width = width
        for _ in range(30):
            learner.advance(16, 0.3)
        runs.append((learner.q.copy(), learner.agents.states.copy(), learner.updates))
    assert runs[0][2] > 10_000
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("algo, chance", [
    ({"starts": "fixed", "start_states": [63]}, 0.0),
    ({"starts": "mixed", "exploring_fraction": 0.0, "start_states": [63, 63]}, 0.0),
    ({"starts": "fixed", "start_states": [0, 63]}, 0.5),
    ({"starts": "mixed", "exploring_fraction": 0.5, "start_states": [63]}, 0.5 * 63 / 64),
])
def test_start_update_chance_rejects_starts_that_cannot_update(algo, chance):
    """The 8x8 gridworld's goal corner 63 is absorbing: an episode starting there ends without an update."""
    lr = _learner({"kind": "gridworld", "rows": 8, "cols": 8}, **algo)
    if chance == 0.0:
        with pytest.raises(BadInput, match=r"^\[algo\] starts / start_states .*absorbing") as exc:
            start_update_chance(lr)
        assert exc.value.agreed and "\n" not in str(exc.value)
    else:
        assert start_update_chance(lr) == pytest.approx(chance)


def test_start_update_chance_rejects_an_mdp_of_self_loops(tmp_path):
    S, A = 6, 2
    path = tmp_path / "loops.h5"
    write_mdp(path, np.arange(S * A + 1), np.repeat(np.arange(S), A), np.ones(S * A), np.ones((S, A)), 0.9)
    with pytest.raises(BadInput, match="every state is absorbing"):
        start_update_chance(_learner({"kind": "mdp-file", "path": str(path)}))


def test_monitor_stops_a_run_whose_episodes_make_no_updates():
    cfg = parse_config({"algo": {"name": "q-learning", "budget_updates": 1000}})
    mon = Monitor(cfg.algo, 1, Console(MPI.COMM_SELF, "none"), 0.0, update_chance=0.5)
    limit = stall_limit(0.5)
    assert 0.5 ** limit <= np.exp(-50) and stall_limit(1e-9) > 1e10
    totals = np.zeros(len(TOTALS))
    totals[T["agents"]] = 4
    for restarts in range(0, int(limit) + 4, 10):  # updates keep coming: never stalled
        totals[T["updates"]] += 1
        totals[T["restarts"]] = restarts
        assert not mon.should_stop(totals)
    totals[T["restarts"]] += int(limit) + 4  # as many starts as allowed, plus one per agent: still fine
    assert not mon.should_stop(totals)
    totals[T["restarts"]] += 1
    with pytest.raises(BadInput, match="no Q update in the last .* episode starts") as exc:
        mon.should_stop(totals)
    assert exc.value.agreed
