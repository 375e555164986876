"""Malformed configs, MDP files and arguments: exit 2, one line naming what and where, on any rank count."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import hpcql, write_toml
from hpcql.mdp import write_mdp


def good_mdp(path, S=20, A=2):
    rng = np.random.default_rng(0)
    indptr = np.arange(0, S * A * 2 + 1, 2)
    indices = rng.integers(0, S, size=S * A * 2)
    probs = np.full(S * A * 2, 0.5)
    write_mdp(path, indptr, indices, probs, rng.random((S, A)), discount=0.9)


def corrupt(path, what):
    with h5py.File(path, "r+") as f:
        if what == "row-sum":
            p = f["transitions/probs"][:]
            p[27] = 0.4  # row 13 (state 6, action 1)
            f["transitions/probs"][:] = p
        elif what == "negative":
            p = f["transitions/probs"][:]
            p[60], p[61] = -0.5, 1.5  # row 30
            f["transitions/probs"][:] = p
        elif what == "index":
            i = f["transitions/indices"][:]
            i[70] = 999  # row 35
            f["transitions/indices"][:] = i
        elif what == "missing":
            del f["rewards"]
        elif what == "shape":
            del f["rewards"]
            f.create_dataset("rewards", data=np.zeros((20, 3)))
        elif what == "format":
            f.attrs["format"] = "something-else"
        elif what == "nan-prob":
            p = f["transitions/probs"][:]
            p[44] = np.nan  # row 22
            f["transitions/probs"][:] = p
        elif what == "version-str":
            f.attrs["version"] = "one"
        elif what == "states-float":
            f.attrs["num_states"] = 20.5
        elif what == "discount-str":
            f.attrs["discount"] = "x"
        elif what == "uint64-index":
            i = f["transitions/indices"][:].astype(np.uint64)
            i[70] = 2**64 - 1  # row 35; a cast to int64 would read -1
            del f["transitions/indices"]
            f.create_dataset("transitions/indices", data=i)


@pytest.mark.parametrize(
    "what, expected",
    [
        ("row-sum", "row 13 (state 6, action 1): probabilities sum to 0.9"),
        ("negative", "row 30 (state 15, action 0): negative probability"),
        ("index", "row 35 (state 17, action 1): next-state index 999 out of range"),
        ("missing", "dataset '/rewards' missing"),
        ("shape", "dataset '/rewards' has shape (20, 3)"),
        ("format", "attribute 'format'"),
        ("nan-prob", "row 22 (state 11, action 0): non-finite probability nan"),
        ("version-str", "attribute 'version' is 'one', expected 1"),
        ("states-float", "attribute 'num_states' is 20.5, expected an integer >= 1"),
        ("discount-str", "attribute 'discount' is 'x'"),
        ("uint64-index", f"dataset '/transitions/indices': value {2**64 - 1} is too large"),
    ],
)
def test_malformed_mdp_file(tmp_path, what, expected):
    path = tmp_path / "m.h5"
    good_mdp(path)
    corrupt(path, what)
    cfg = write_toml(tmp_path / "c.toml", f'[run]\nout_dir = "{tmp_path / "o"}"\n[env]\nkind = "mdp-file"\n'
                                          f'path = "{path}"\n[algo]\nname = "value-iteration"\n')
    res = hpcql(["run", str(cfg)], ranks=3, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0] and str(path) in lines[0]


def test_bad_config_under_mpi_exits_2_once(tmp_path):
    cfg = write_toml(tmp_path / "c.toml", '[algo]\nname = "value-iteration"\ngamma = 2.0\n')
    res = hpcql(["run", str(cfg)], ranks=2, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"hpcql: error: {cfg}: [algo] gamma: Input should be less than 1 (got 2.0)"]


def test_bad_arguments_exit_2():
    res = hpcql(["run", "--bogus"], ranks=1, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    res = hpcql(["inspect", "/nonexistent.h5"], ranks=1, timeout=60)
    assert res.returncode == 2 and "file not found" in res.stderr


def test_out_dir_that_cannot_be_created_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = write_toml(tmp_path / "c.toml", f'[run]\nout_dir = "{blocker / "sub"}"\n[env]\nkind = "gridworld"\n'
                                          'rows = 5\ncols = 5\n[algo]\nname = "value-iteration"\n')
    res = hpcql(["run", str(cfg)], ranks=2, timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and lines == [f"hpcql: error: [run] out_dir: cannot create {blocker / 'sub'} "
                                             "(Not a directory)"], res.stderr
    assert blocker.read_text() == "x"


def test_argument_errors_point_to_the_right_help():
    res = hpcql(["bogus"], ranks=1, timeout=60)
    assert res.returncode == 2 and "(see `hpcql --help`)" in res.stderr
    res = hpcql(["scale"], ranks=1, timeout=60)
    assert res.returncode == 2 and "(see `hpcql scale --help`)" in res.stderr


def test_inspect_of_a_damaged_file_exits_2(tmp_path):
    path = tmp_path / "m.h5"
    good_mdp(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["num_states"]
    res = hpcql(["inspect", str(path)], ranks=1, timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and f"{path}: damaged file" in lines[0], res.stderr


@pytest.mark.parametrize("options, expected", [
    ({"max_episode_steps": 0}, "ValueError"),       # gymnasium's TimeLimit rejects it with a ValueError
    ({"no_such_option": 1}, "TypeError"),
])
def test_dqn_env_option_the_env_rejects_is_bad_input(options, expected):
    from hpcql.config import GymEnv
    from hpcql.dqn.envs import make_env
    from hpcql.errors import BadInput

    with pytest.raises(BadInput, match=rf"^\[env\] options: bad option for 'CartPole-v1': {expected}"):
        make_env(GymEnv(kind="gymnasium", id="CartPole-v1", options=options))
