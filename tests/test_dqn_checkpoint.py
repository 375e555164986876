"""DQN checkpoints: bitwise-exact resume after a signal, resume under another rank count,
parameter-server checkpoints at quiesced points (every launch has a timeout)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import hpcql, poison_dataset, write_toml
from hpcql.errors import EXIT_CHECKPOINTED

JOB = """
[run]
out_dir = "{out}"
progress = "none"
plots = false
seed = 5
[env]
kind = "gymnasium"
id = "CartPole-v1"
num_envs = 2
[algo]
name = "dqn"
mode = "{mode}"
async_scheme = "{scheme}"
total_steps = 3000
hidden = [64, 64]
batch_size = 32
learning_starts = 500
target_update_every = 50
eval_every = 1000
eval_episodes = 4
check_every = 50
{extra}
"""


def job(tmp_path: Path, name: str, mode: str = "sync", scheme: str = "overlap", extra: str = "") -> Path:
    return write_toml(tmp_path / f"{name}.toml", JOB.format(out=tmp_path / name, mode=mode, scheme=scheme,
                                                             extra=extra))


def outputs(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        out = {f"params/{k}": np.asarray(f["params"][k]).tobytes() for k in f["params"]}
        out |= {k: np.asarray(f[k]).tobytes() for k in ("eval/returns", "eval/env_steps", "curve/updates",
                                                         "curve/loss", "curve/train_return_mean")}
        out |= {k: np.asarray(f.attrs[k]).tobytes() for k in ("staleness_mean", "staleness_max", "updates")}
    return out


def interrupt(tmp_path: Path, name: str, ranks: int, mode: str = "sync", scheme: str = "overlap",
              at: int = 200, extra: str = "") -> Path:
    """Run with SIGUSR1 sent to the last rank at update ``at``: exit 3, a checkpoint, no result."""
    cfg = job(tmp_path, name, mode, scheme, extra + f"\n[debug]\nsignal_rank = {ranks - 1}\nsignal_at_iteration = {at}")
    p = hpcql(["run", str(cfg)], ranks=ranks, timeout=240)
    assert p.returncode == EXIT_CHECKPOINTED, p.stdout + p.stderr
    assert "checkpointed, please requeue" in p.stderr
    assert sorted((tmp_path / name / "checkpoints").glob("ckpt-*.h5"))
    assert not (tmp_path / name / "result.h5").exists()
    return cfg


@pytest.mark.parametrize("mode,scheme", [("sync", "overlap"), ("async", "overlap")])
def test_signal_resume_is_bitwise_exact(tmp_path: Path, mode: str, scheme: str) -> None:
    """2 ranks: interrupted at update 200 and resumed == never interrupted (params, eval returns, curve)."""
    ref = hpcql(["run", str(job(tmp_path, "ref", mode, scheme))], ranks=2, timeout=240)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    cfg = interrupt(tmp_path, "cut", 2, mode, scheme)
    res = hpcql(["run", str(cfg), "--set", "debug.signal_rank=-1"], ranks=2, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming from" in res.stdout
    assert outputs(tmp_path / "cut" / "result.h5") == outputs(tmp_path / "ref" / "result.h5")


def _replicated_q(ckpt: Path) -> np.ndarray:
    with h5py.File(ckpt, "r") as f:
        return np.asarray(f["replicated/q"])


def _result_flat(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        names = list(f["params"])  # "0.weight", "0.bias", ... in module order
        order = sorted(names, key=lambda n: (int(n.split(".")[0]), n.split(".")[1] != "weight"))
        return np.concatenate([np.asarray(f["params"][n]).ravel() for n in order])


def test_two_rank_checkpoint_resumes_at_one_and_three_ranks(tmp_path: Path) -> None:
    """At 1 rank with 4 envs (the same global env count, as jobs/dqn-cartpole.toml scales) and at 3 ranks."""
    cfg = interrupt(tmp_path, "cut", 2)
    ckpt = sorted((tmp_path / "cut" / "checkpoints").glob("ckpt-*.h5"))[-1]
    step = int(ckpt.stem.split("-")[1])
    with h5py.File(ckpt, "r") as f:
        stored = sum(len(f[f"per_rank/{r}/replay_action"]) for r in range(2))
    for ranks in (1, 3):
        name = f"r{ranks}"
        shutil.copytree(tmp_path / "cut", tmp_path / name)
        text = cfg.read_text().replace(str(tmp_path / "cut"), str(tmp_path / name))
        if ranks == 1:
            text = text.replace("num_envs = 2", "num_envs = 4")
        cfg_r = write_toml(tmp_path / f"{name}.toml", text)
        # budget just under the checkpoint's step: no further training, the result holds the restored network
        p = hpcql(["run", str(cfg_r), "--set", "debug.signal_rank=-1", "--set", f"algo.total_steps={step - 6}"],
                  ranks=ranks, timeout=240)
        assert p.returncode == 0, p.stdout + p.stderr
        envs = " (2 to 4 env(s) per rank)" if ranks == 1 else ""
        assert f"resharding DQN checkpoint from 2 to {ranks} rank(s){envs}:" in p.stdout
        moved = re.search(r"([\d,]+) replay transitions redistributed round-robin \(([^)]*)\)", p.stdout)
        assert moved and int(moved.group(1).replace(",", "")) == stored
        shares = [int(x.replace(",", "")) for x in re.findall(r"rank \d+: ([\d,]+)", moved.group(2))]
        assert len(shares) == ranks and sum(shares) == stored  # nothing dropped: the shards fit
        if ranks == 1:
            assert "in-progress episodes" in p.stderr and "old rank(s) [1]" in p.stderr
            assert "rank(s) [0] start fresh episodes" in p.stderr  # 4 envs: rank 0 cannot reuse old rank 0's 2
        else:
            assert "rank(s) [2] start fresh episodes" in p.stderr
        assert _result_flat(tmp_path / name / "result.h5").tobytes() == _replicated_q(ckpt).tobytes()
        # and training goes on from there to the full budget
        p = hpcql(["run", str(cfg_r), "--overwrite", "--set", "debug.signal_rank=-1"], ranks=ranks, timeout=240)
        assert p.returncode == 0, p.stdout + p.stderr
        with h5py.File(tmp_path / name / "result.h5", "r") as f:
            assert int(f["eval/env_steps"][-1]) >= 3000 - 4 * ranks and f.attrs["ranks"] == ranks


def test_parameter_server_checkpoints_at_quiesced_points(tmp_path: Path) -> None:
    """every_iterations = 1: a checkpoint after each evaluation; a signal quiesces, saves, exits 3; resume finishes."""
    cfg = interrupt(tmp_path, "ps", 2, "async", "parameter-server", at=300,
                    extra="[checkpoint]\nevery_iterations = 1\nkeep = 5")
    ckpts = sorted((tmp_path / "ps" / "checkpoints").glob("ckpt-*.h5"))
    assert len(ckpts) >= 2  # at least one evaluation point (1000 steps) and the signal point
    with h5py.File(ckpts[-1], "r") as f:
        assert f.attrs["engine"] == "dqn" and f.attrs["ranks"] == 2
        assert '"scheme": "parameter-server"' in f.attrs["meta_json"]
    res = hpcql(["run", str(cfg), "--set", "debug.signal_rank=-1"], ranks=2, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming from" in res.stdout and ckpts[-1].name in res.stdout
    with h5py.File(tmp_path / "ps" / "result.h5", "r") as f:
        assert int(f["eval/env_steps"][-1]) >= 2996 and f["eval/returns"].shape[1] == 4


@pytest.mark.parametrize("override, expected", [
    (["algo.hidden=[32]"], "algo.hidden"),
    (["algo.buffer_size=10"], "algo.buffer_size 50000 -> 10"),
    (["algo.n_step=1"], "algo.n_step 3 -> 1"),
    (["algo.mode=async", "algo.async_scheme=parameter-server"], "scheme sync -> parameter-server"),
], ids=["hidden", "buffer", "n_step", "scheme"])
def test_resume_with_an_incompatible_layout_is_bad_input(tmp_path: Path, override: list[str], expected: str) -> None:
    """A checkpoint resumed with another network, replay capacity, n-step or parameter-server scheme:
    one line naming what differs, exit 2, checkpoints kept (it ran at 1 rank: the scheme check needs no PS)."""
    cfg = interrupt(tmp_path, "net", 1)
    ckpts = sorted((tmp_path / "net" / "checkpoints").glob("ckpt-*.h5"))
    before = {p.name: p.read_bytes() for p in ckpts}
    sets = [a for o in override for a in ("--set", o)]
    res = hpcql(["run", str(cfg), "--set", "debug.signal_rank=-1", *sets], ranks=2 if "scheme" in expected else 1,
                timeout=240)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpcql: error: ") and ckpts[-1].name in lines[0], res.stderr
    assert expected in lines[0]
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "net" / "checkpoints").glob("ckpt-*.h5"))} == before
    assert not (tmp_path / "net" / "result.h5").exists()


def test_resume_of_a_diverged_network_is_bad_input(tmp_path: Path) -> None:
    """A checkpoint that verifies but whose network holds a NaN: exit 2, one line naming the file,
    checkpoints kept, no result written."""
    cfg = interrupt(tmp_path, "nan", 1)
    newest = sorted((tmp_path / "nan" / "checkpoints").glob("ckpt-*.h5"))[-1]
    poison_dataset(newest, "replicated/target", (7,))
    before = newest.read_bytes()
    res = hpcql(["run", str(cfg), "--set", "debug.signal_rank=-1"], ranks=1, timeout=240)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert f"{newest}: checkpoint network (target) holds non-finite parameters" in lines[0]
    assert newest.read_bytes() == before and not (tmp_path / "nan" / "result.h5").exists()
