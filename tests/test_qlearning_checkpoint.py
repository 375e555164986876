"""Q-learning checkpoints: exact resume after a signal (sync), resume under another rank count, async."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import hpcql, poison_dataset, write_toml
from hpcql.config import GridworldEnv
from hpcql.errors import EXIT_CHECKPOINTED
from hpcql.mdp.gridworld import gridworld_shard
from reference import evaluate_policy, optimal_values

SMALL = 'kind = "gridworld"\nrows = 20\ncols = 20\nslip = 0.2'
SMALL_ALGO = 'budget_updates = 500_000\nagents_per_rank = 200\neval_points = 3'
GRID24 = 'kind = "gridworld"\nrows = 24\ncols = 24\nslip = 0.1'
GRID24_ALGO = 'budget_updates = 6_000_000\nagents_per_rank = 512\neval_points = 0'


def config(tmp_path, name: str, env: str, algo: str, extra: str = "") -> str:
    return str(write_toml(tmp_path / f"{name}.toml", f"""
[run]
name = "{name}"
out_dir = "{tmp_path / name}"
progress = "none"
status_every_seconds = 1000
plots = false
[env]
{env}
[algo]
name = "q-learning"
{algo}
{extra}
"""))


WALL_CLOCK = {"seconds", "updates_per_s", "migrated_per_s"}
"""Metric columns measured in wall time: the only ones a resume may change."""


def result(tmp_path, name: str) -> dict:
    with h5py.File(tmp_path / name / "result.h5") as f:
        history = {k: f["history"][k][()] for k in f["history"] if k not in WALL_CLOCK}
        return {k: f[k][()] for k in ("Q", "V", "policy")} | {"attrs": dict(f.attrs), "history": history}


def interrupted_then_resumed(tmp_path, name, env, algo, ranks, resume_ranks, at, extra=""):
    cfg = config(tmp_path, name, env, algo, extra + f"\n[debug]\nsignal_rank = {ranks - 1}\nsignal_at_iteration = {at}")
    first = hpcql(["run", cfg], ranks=ranks, timeout=120)
    assert first.returncode == EXIT_CHECKPOINTED, first.stdout + first.stderr
    assert "checkpointed, please requeue" in first.stderr
    ckpts = sorted((tmp_path / name / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts and not (tmp_path / name / "result.h5").exists()
    with h5py.File(ckpts[-1]) as f:
        assert f.attrs["engine"] == "q-learning" and f.attrs["ranks"] == ranks
        assert f["Q"].shape == f["visits"].shape
        held = sum(f[f"per_rank/{r}/agents"].shape[0] for r in range(ranks))
        offsets = f["shard_offsets"][()].tolist()
    names = [p.name for p in ckpts]
    second = hpcql(["run", cfg, "--set", "debug.signal_rank=-1"], ranks=resume_ranks, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from" in second.stdout
    return result(tmp_path, name), held, names, offsets


@pytest.mark.parametrize("rebalance_every", [0, 7])
def test_sync_signal_resume_is_bitwise_exact(tmp_path, rebalance_every):
    """Also with load balancing: the resumed run first moves to the checkpoint's partition."""
    algo = f'mode = "sync"\n{SMALL_ALGO}\nrebalance_every = {rebalance_every}'
    assert hpcql(["run", config(tmp_path, "ref", SMALL, algo)], ranks=2, timeout=120).returncode == 0
    ref = result(tmp_path, "ref")
    got, held, names, offsets = interrupted_then_resumed(tmp_path, "cut", SMALL, algo, 2, 2, at=40,
                                         extra="[checkpoint]\nevery_iterations = 15")
    assert held == 400
    if rebalance_every:
        assert ref["attrs"]["rebalances"] > 0
        assert offsets != [0, 200, 400]  # the checkpoint was cut elsewhere: the resume had to recut
    for k in ("Q", "V", "policy"):
        assert got[k].tobytes() == ref[k].tobytes(), k
    for k in ("updates", "migrated", "agents_final", "rebalances", "greedy_value_start", "gap_start", "mean_gap"):
        assert got["attrs"][k] == ref["attrs"][k], k
    # the metric window and the evaluator's warm start are checkpointed too: evaluations 1 and 2
    # bracket the signal, so the rows after it depend on both
    assert got["history"].keys() == ref["history"].keys() and "mean_abs_td" in ref["history"]
    for k, v in ref["history"].items():
        assert got["history"][k].tobytes() == v.tobytes(), k
    # periodic checkpoints every 15 rounds, then the one at the signal (round 41), keep = 3;
    # the periodic saves of the resumed run do not perturb it either
    assert names == ["ckpt-000000000015.h5", "ckpt-000000000030.h5", "ckpt-000000000041.h5"]
    # metric rows written before the interruption survive the resume
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert len(rows) >= len((tmp_path / "ref" / "metrics.csv").read_text().splitlines()) - 1


def test_sync_resume_under_more_ranks_conserves_agents_and_converges(tmp_path):
    env = GridworldEnv(kind="gridworld", rows=24, cols=24, slip=0.1)
    sh = gridworld_shard(env, 0, 0, 24 * 24)
    P = sp.csr_matrix((sh.probs, sh.indices, sh.indptr), shape=(24 * 24 * 4, 24 * 24))
    v_star, _ = optimal_values(P, sh.rewards, 0.99)
    got, held, names, offsets = interrupted_then_resumed(tmp_path, "grow", GRID24, f'mode = "sync"\n{GRID24_ALGO}', 2, 3, at=150)
    assert held == 2 * 512
    a = got["attrs"]
    assert a["ranks"] == 3 and a["agents"] == a["agents_final"] == 2 * 512  # global count preserved
    assert a["updates"] >= 6_000_000 and a["migrated"] > 10_000
    v_pi = evaluate_policy(P, sh.rewards, 0.99, got["policy"])
    assert (v_star[0] - v_pi[0]) / v_star[0] < 0.01


def test_async_signal_resume_under_fewer_ranks_conserves_agents(tmp_path):
    ranks, resume_ranks = 3, 2
    algo = f'mode = "async"\n{SMALL_ALGO}'
    got, held, names, offsets = interrupted_then_resumed(tmp_path, "async", SMALL, algo, ranks, resume_ranks, at=30)
    assert held == 200 * ranks  # nothing in flight in the checkpoint: the drain brought every agent home
    a = got["attrs"]
    assert a["agents"] == a["agents_final"] == 200 * ranks
    assert a["updates"] >= 500_000 and int(np.sum(a["updates_per_rank"])) == a["updates"]


def test_fresh_keeps_the_checkpoints_when_the_config_is_rejected(tmp_path):
    """``--fresh`` deletes checkpoints only after every check (Learner's included) has passed."""
    cfg = config(tmp_path, "fresh", SMALL, f'mode = "sync"\n{SMALL_ALGO}', "[checkpoint]\nevery_iterations = 20")
    assert hpcql(["run", cfg], ranks=2, timeout=120).returncode == 0
    ckpts = sorted((tmp_path / "fresh" / "checkpoints").glob("ckpt-*.h5"))
    before = (tmp_path / "fresh" / "result.h5").read_bytes()
    assert ckpts
    for bad in (["--set", "algo.start_states=[999]"], ["--set", "algo.starts=fixed", "--set", "algo.start_states=[399]"]):
        proc = hpcql(["run", cfg, "--overwrite", "--fresh", *bad], ranks=2, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "[algo] start" in proc.stderr, proc.stderr
        assert sorted((tmp_path / "fresh" / "checkpoints").glob("ckpt-*.h5")) == ckpts
        assert (tmp_path / "fresh" / "result.h5").read_bytes() == before
    proc = hpcql(["run", cfg, "--overwrite", "--fresh"], ranks=2, timeout=120)
    assert proc.returncode == 0 and "resuming" not in proc.stdout, proc.stdout + proc.stderr


def test_checkpoint_with_non_finite_q_is_bad_input(tmp_path):
    """A checkpoint that verifies but holds NaN in Q: exit 2 naming file and dataset; left in place."""
    cfg = config(tmp_path, "nanq", SMALL, f'mode = "sync"\n{SMALL_ALGO}', "[debug]\nsignal_rank = 1\nsignal_at_iteration = 5")
    assert hpcql(["run", cfg], ranks=2, timeout=120).returncode == EXIT_CHECKPOINTED
    newest = sorted((tmp_path / "nanq" / "checkpoints").glob("ckpt-*.h5"))[-1]
    poison_dataset(newest, "Q", (3, 1))
    before = newest.read_bytes()
    res = hpcql(["run", cfg, "--set", "debug.signal_rank=-1"], ranks=2, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert f"{newest}: dataset 'Q' holds non-finite values" in lines[0]
    assert newest.read_bytes() == before and not (tmp_path / "nanq" / "result.h5").exists()
