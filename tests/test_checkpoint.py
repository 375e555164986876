"""Checkpoints: exact resume after a signal, resharding, SIGKILL crash safety, corruption."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import MPIEXEC, hpcql, write_toml
from hpcql.errors import EXIT_CHECKPOINTED, EXIT_STOPPED

GRID = 'kind = "gridworld"\nrows = 60\ncols = 70\nslip = 0.2\nobstacle_density = 0.1\nstep_reward = -0.01'


def config(tmp_path, name: str, algo: str, extra: str = "", env: str = GRID) -> str:
    return str(write_toml(tmp_path / f"{name}.toml", f"""
[run]
out_dir = "{tmp_path / name}"
progress = "none"
plots = false
[env]
{env}
[algo]
{algo}
gamma = 0.995
tol = 1e-8
{extra}
"""))


def result(tmp_path, name: str) -> dict[str, np.ndarray]:
    with h5py.File(tmp_path / name / "result.h5") as f:
        return {k: f[k][()] for k in ("Q", "V", "policy")} | {"iterations": f.attrs["iterations"]}


def interrupted_then_resumed(tmp_path, name, algo, ranks, resume_ranks, at=40):
    cfg = config(tmp_path, name, algo, f"[debug]\nsignal_rank = {ranks - 1}\nsignal_at_iteration = {at}")
    first = hpcql(["run", cfg], ranks=ranks, timeout=120)
    assert first.returncode == EXIT_CHECKPOINTED, first.stderr
    assert "checkpointed, please requeue" in first.stderr
    ckpts = sorted((tmp_path / name / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts and not (tmp_path / name / "result.h5").exists()
    # resume: same config without the injected signal
    second = hpcql(["run", cfg, "--set", "debug.signal_rank=-1"], ranks=resume_ranks, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout
    return result(tmp_path, name)


@pytest.mark.parametrize("algo", ['name = "value-iteration"',
                                  'name = "policy-iteration"\nvariant = "optimistic"\neval_sweeps = 5',
                                  'name = "policy-iteration"\nvariant = "inexact"'])
def test_signal_checkpoint_resume_is_bitwise_exact(tmp_path, algo):
    at = 2 if "policy-iteration" in algo else 40  # PI converges in few outer iterations
    ref_cfg = config(tmp_path, "ref", algo)
    assert hpcql(["run", ref_cfg], ranks=2, timeout=120).returncode == 0
    ref = result(tmp_path, "ref")
    got = interrupted_then_resumed(tmp_path, "cut", algo, 2, 2, at=at)
    for k in ("Q", "V", "policy"):
        assert got[k].tobytes() == ref[k].tobytes(), k
    assert got["iterations"] == ref["iterations"]


def test_resume_under_another_rank_count(tmp_path):
    algo = 'name = "value-iteration"'
    assert hpcql(["run", config(tmp_path, "ref", algo)], ranks=3, timeout=120).returncode == 0
    ref = result(tmp_path, "ref")
    got = interrupted_then_resumed(tmp_path, "cut", algo, 2, 3)
    np.testing.assert_allclose(got["V"], ref["V"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["Q"], ref["Q"], rtol=0, atol=1e-12)


def test_async_resume_reaches_the_same_fixed_point(tmp_path):
    ref_cfg = config(tmp_path, "ref", 'name = "value-iteration"')
    assert hpcql(["run", ref_cfg], ranks=2, timeout=120).returncode == 0
    got = interrupted_then_resumed(tmp_path, "cut", 'name = "value-iteration"\nmode = "async"', 3, 2, at=100)
    assert np.max(np.abs(got["V"] - result(tmp_path, "ref")["V"])) < 1e-8


def _damage_dataset(path) -> None:
    """Flip 16 bytes inside V's data (Fletcher32 must catch it)."""
    with h5py.File(path) as f:
        offset = f["V"].id.get_offset() if f["V"].chunks is None else f["V"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    for i in range(16):
        data[offset + 100 + i] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_attribute(path) -> None:
    """Change one digit of the meta_json attribute: still valid JSON, so only the digest can tell."""
    data = bytearray(path.read_bytes())
    start = data.index(b'{"', data.index(b"meta_json"))
    digit = next(i for i in range(start, start + 400) if chr(data[i]).isdigit())
    data[digit] = ord("7") if data[digit] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_damage_dataset, _damage_attribute], ids=["dataset", "attribute"])
def test_corrupt_newest_checkpoint_is_skipped(tmp_path, damage):
    algo = 'name = "value-iteration"'
    assert hpcql(["run", config(tmp_path, "ref", algo)], ranks=2, timeout=120).returncode == 0
    cfg = config(tmp_path, "cut", algo, "[checkpoint]\nevery_iterations = 10\n"
                 "[debug]\nsignal_rank = 0\nsignal_at_iteration = 45")
    assert hpcql(["run", cfg], ranks=2, timeout=120).returncode == EXIT_CHECKPOINTED
    newest = sorted((tmp_path / "cut" / "checkpoints").glob("ckpt-*.h5"))[-1]
    assert hpcql(["inspect", str(newest)], ranks=1, timeout=60).returncode == 0
    damage(newest)
    insp = hpcql(["inspect", str(newest)], ranks=1, timeout=60)
    assert "integrity: FAILED" in insp.stdout and insp.returncode == 2
    assert insp.stderr.count("\n") == 1 and str(newest) in insp.stderr
    res = hpcql(["run", cfg, "--set", "debug.signal_rank=-1"], ranks=2, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"skipping checkpoint {newest}" in res.stderr
    assert "resuming from" in res.stdout and newest.name not in res.stdout
    assert result(tmp_path, "cut")["V"].tobytes() == result(tmp_path, "ref")["V"].tobytes()


def test_sigkill_at_random_moments_never_loses_the_last_checkpoint(tmp_path):
    algo = 'name = "value-iteration"'
    env = 'kind = "gridworld"\nrows = 150\ncols = 150\nslip = 0.2\nstep_reward = -0.01'
    assert hpcql(["run", config(tmp_path, "ref", algo, env=env)], ranks=2, timeout=120).returncode == 0
    ref = result(tmp_path, "ref")
    cfg = config(tmp_path, "crash", algo, "[checkpoint]\nevery_iterations = 1\nkeep = 2", env=env)
    rng = random.Random(1234)
    resumed_steps = []
    for trial in range(20):
        proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "hpcql", "run", cfg, "--fresh"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(rng.uniform(2.5, 5.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        ckpts = sorted((tmp_path / "crash" / "checkpoints").glob("ckpt-*.h5"))
        if not ckpts:
            continue  # killed before the first checkpoint: nothing to lose
        # the newest complete checkpoint verifies and the run resumes from it
        from hpcql.checkpoint import verify
        assert verify(ckpts[-1]) is None, (trial, ckpts[-1], verify(ckpts[-1]))
        res = hpcql(["run", cfg, "--overwrite", "--set", "checkpoint.every_iterations=0"], ranks=2, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "resuming from" in res.stdout
        resumed_steps.append(int(ckpts[-1].stem.split("-")[1]))
        assert result(tmp_path, "crash")["V"].tobytes() == ref["V"].tobytes()
    assert len(resumed_steps) >= 15, resumed_steps


def test_signal_with_checkpoints_disabled_exits_4_and_claims_no_checkpoint(tmp_path):
    """Nothing saved: exit 4 (not 3, which the SLURM template requeues on), and no 'checkpointed' message."""
    cfg = config(tmp_path, "nock", 'name = "value-iteration"',
                 "[checkpoint]\nenabled = false\n[debug]\nsignal_rank = 1\nsignal_at_iteration = 20")
    res = hpcql(["run", cfg], ranks=2, timeout=120)
    assert res.returncode == EXIT_STOPPED, res.stderr
    assert "nothing was saved" in res.stderr and "checkpointed" not in res.stderr
    assert not (tmp_path / "nock" / "checkpoints").exists() and not (tmp_path / "nock" / "result.h5").exists()


@pytest.mark.parametrize("v, message", [
    (np.zeros(50), "dataset 'V' is (50,) float64, expected shape (4200,)"),
    (np.full(4200, np.nan), "dataset 'V' holds non-finite values"),
], ids=["length", "nan"])
def test_checkpoint_whose_values_do_not_fit_the_problem_is_bad_input(tmp_path, v, message):
    """A checkpoint that verifies but holds V of another length, or NaN: exit 2 naming it; it is left in place."""
    cfg = config(tmp_path, "cut", 'name = "value-iteration"', "[debug]\nsignal_rank = 0\nsignal_at_iteration = 20")
    assert hpcql(["run", cfg], ranks=2, timeout=120).returncode == EXIT_CHECKPOINTED
    newest = sorted((tmp_path / "cut" / "checkpoints").glob("ckpt-*.h5"))[-1]
    with h5py.File(newest, "r+") as f:
        del f["V"]
        f.create_dataset("V", data=v)
    before = newest.read_bytes()
    res = hpcql(["run", cfg, "--set", "debug.signal_rank=-1"], ranks=2, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"{newest}: {message}" in lines[0]
    assert newest.read_bytes() == before and not (tmp_path / "cut" / "result.h5").exists()


def test_sharded_write_with_checksums_and_a_rank_without_rows(tmp_path):
    """write_sharded round-trips every kind of dataset with Fletcher32 on the sharded ones, also when a rank
    owns no rows (under parallel HDF5 that rank must still join each collective write, or the others hang)."""
    from conftest import REPO, mpirun

    proc = mpirun([str(REPO / "tests/mpi_scripts/sharded_write.py"), str(tmp_path / "o.h5")], ranks=3, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
