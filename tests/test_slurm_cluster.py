"""`hpcql submit` and `hpcql scale --launcher slurm` on a real SLURM cluster.

Uses the cluster on this machine when `sinfo` answers; otherwise starts one with
scripts/slurm-local.sh (root + apt-get). Skips, saying why, only where that is impossible.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_HPCQL = '''
import signal, sys, time
from pathlib import Path
out = Path([a.split("=", 1)[1] for a in sys.argv if a.startswith("run.out_dir=")][-1])
ckpt = out / "checkpoint.txt"
if ckpt.exists():
    (out / "result.txt").write_text("resumed from " + ckpt.read_text())
    sys.exit(0)
def on_signal(signum, frame):
    ckpt.write_text(f"signal {signum}")
    sys.exit(3)
signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
(out / "started.txt").write_text("x")
time.sleep(60)
sys.exit(1)
'''


def sh(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{exc.stdout}\n{exc.stderr}")


def _cluster_ready() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in r.stdout.split())


@pytest.fixture(scope="module")
def cluster() -> None:
    if _cluster_ready():
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster answers and scripts/slurm-local.sh needs root to install/start one")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no SLURM cluster, and neither SLURM nor apt-get is installed to make one")
    r = sh([str(REPO / "scripts" / "slurm-local.sh"), "up"], timeout=600)
    if r.returncode != 0 or not _cluster_ready():
        pytest.skip(f"scripts/slurm-local.sh up could not start a cluster: {r.stderr.strip()[-400:]}")


def job_config(tmp_path: Path, name: str = "job", rows: int = 16, extra: str = "") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[run]\nname = "{name}"\nout_dir = "runs"\n[env]\nkind = "gridworld"\nrows = {rows}\n'
                 f'cols = 16\n[algo]\nname = "value-iteration"\ngamma = 0.95\ntol = 1e-6\n'
                 f'[slurm]\nntasks_per_node = 2\ntime = "00:10:00"\nsignal_seconds = 60\n{extra}')
    return p


def hpcql(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "hpcql", *args], timeout=timeout, cwd=cwd,
              env=dict(os.environ, PYTHONUNBUFFERED="1"))


def job_state(job_id: str) -> str:
    r = sh(["scontrol", "show", "job", job_id], timeout=20)
    for tok in r.stdout.split():
        if tok.startswith("JobState="):
            return tok.split("=", 1)[1]
    return "GONE"


def wait_for(pred, timeout: float, what: str, step: float = 0.5) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_submit_runs_a_tabular_job_to_completion(cluster, tmp_path: Path):
    r = hpcql(["submit", str(job_config(tmp_path)), "--wait"], tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[0]
    run_dir = tmp_path / "runs" / job_id
    with h5py.File(run_dir / "result.h5") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["iterations"] > 0
        assert f["Q"].shape == (256, 4)
    log = next((tmp_path / "runs").glob(f"*-{job_id}.out")).read_text()
    assert "hpcql-job: finished" in log and "srun --mpi=pmi2" in log


def test_array_job_runs_a_three_point_sweep(cluster, tmp_path: Path):
    r = hpcql(["submit", str(job_config(tmp_path)),
               "--ntasks-per-node", "1", "--sweep", "algo.gamma=0.9,0.95,0.99", "--wait"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[0]
    dirs = sorted((tmp_path / "runs" / job_id).iterdir())
    assert [d.name for d in dirs] == ["0-gamma-0.9", "1-gamma-0.95", "2-gamma-0.99"]
    gammas = []
    for d in dirs:
        with h5py.File(d / "result.h5") as f:
            gammas.append(float(f.attrs["gamma"]))
    assert gammas == [0.9, 0.95, 0.99]


def test_trap_forwards_usr1_and_requeues_on_exit_3(cluster, tmp_path: Path):
    """The template's contract alone: USR1 -> forwarded -> exit 3 -> scontrol requeue -> rerun resumes."""
    from hpcql.slurm.render import build_spec, render
    from hpcql.slurm.submit import sbatch, write_script

    fake = tmp_path / "fake_hpcql.py"
    fake.write_text(FAKE_HPCQL)
    spec = build_spec([str(job_config(tmp_path))], [], [], {"ntasks_per_node": 1}, workdir=tmp_path)
    spec.hpcql_cmd = [sys.executable, str(fake)]
    job_id = sbatch(write_script(spec, render(spec)), timeout=60)
    run_dir = tmp_path / "runs" / job_id
    try:
        wait_for(lambda: (run_dir / "started.txt").exists(), 60, "the job to start")
        # what `#SBATCH --signal=B:USR1@N` does near the time limit, now
        assert sh(["scancel", "--batch", "--signal=USR1", job_id]).returncode == 0
        wait_for(lambda: (run_dir / "result.txt").exists(), 120, "the requeued job to resume")
        wait_for(lambda: job_state(job_id) in ("COMPLETED", "GONE"), 60, "the job to complete")
    finally:
        sh(["scancel", job_id])
    assert (run_dir / "result.txt").read_text() == f"resumed from signal {10}"  # SIGUSR1
    log = next((tmp_path / "runs").glob(f"*-{job_id}.out")).read_text()
    assert "got SIGUSR1" in log and "checkpointed; requeueing" in log and "(restart 1)" in log


CHECKPOINT_FEATURE = all(importlib.util.find_spec(m) is not None for m in ("hpcql.checkpoint", "hpcql.signals"))


@pytest.mark.skipif(not CHECKPOINT_FEATURE, reason="needs the checkpoint/signal feature (hpcql/checkpoint.py, "
                    "hpcql/signals.py), not in this tree yet")
def test_usr1_checkpoint_requeue_resume_gives_the_same_result(cluster, tmp_path: Path):
    """Real hpcql: USR1 mid-run -> checkpoint + exit 3 -> requeue -> resume -> bitwise the same result."""
    extra = "ntasks_per_node = 2\n"
    body = (f'[run]\nname = "long"\nout_dir = "runs"\n[env]\nkind = "gridworld"\nrows = 500\ncols = 500\n'
            f'[algo]\nname = "value-iteration"\ngamma = 0.999\ntol = 1e-10\n'
            f'[checkpoint]\nevery_seconds = 1.0\n[slurm]\n{extra}time = "00:10:00"\nsignal_seconds = 60\n')
    cfg = tmp_path / "long.toml"
    cfg.write_text(body)
    r = hpcql(["submit", str(cfg)], tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[0]
    run_dir = tmp_path / "runs" / job_id
    log = lambda: "".join(p.read_text() for p in (tmp_path / "runs").glob(f"*-{job_id}.out"))  # noqa: E731
    try:
        wait_for(lambda: "MDP:" in log(), 120, "the run to start iterating")
        time.sleep(1.0)
        assert sh(["scancel", "--batch", "--signal=USR1", job_id]).returncode == 0
        wait_for(lambda: job_state(job_id) in ("COMPLETED", "FAILED", "GONE"), 240, "the requeued job to finish")
    finally:
        sh(["scancel", job_id])
    text = log()
    assert "checkpointed; requeueing" in text and "(restart 1)" in text, text[-3000:]
    assert job_state(job_id) in ("COMPLETED", "GONE"), text[-3000:]
    ref = tmp_path / "ref"
    from conftest import hpcql as mpi_hpcql

    rr = mpi_hpcql(["run", str(cfg), "--set", f"run.out_dir={ref}"], ranks=2, timeout=300, cwd=tmp_path)
    assert rr.returncode == 0, rr.stderr
    with h5py.File(run_dir / "result.h5") as a, h5py.File(ref / "result.h5") as b:
        assert np.array_equal(a["V"][...], b["V"][...]) and np.array_equal(a["policy"][...], b["policy"][...])
        assert a.attrs["iterations"] == b.attrs["iterations"]


def test_scale_with_slurm_launcher(cluster, tmp_path: Path):
    out = tmp_path / "study"
    r = hpcql(["scale", str(job_config(tmp_path)), "--ranks", "1,2", "--repeat", "1", "--launcher", "slurm",
               "--time", "10", "--out", str(out)], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("scaling.csv", "scaling.md", "speedup.png", "efficiency.png", "phases.png", "projection.md",
                 "projection.json"):
        assert (out / name).stat().st_size > 0, name
    lines = (out / "scaling.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("1,") and lines[2].startswith("2,")
