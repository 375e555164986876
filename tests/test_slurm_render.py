"""`hpcql submit --dry-run`: job scripts rendered from hpcql/templates/ (no SLURM needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcql.config import load_config
from hpcql.errors import BadInput
from hpcql.slurm.render import build_spec, label_for, parse_sweeps, render
from hpcql.slurm.submit import parse_job_id

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.toml"))


def submit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcql", "submit", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "job.toml"
    p.write_text('[run]\nname = "t"\nout_dir = "runs/t"\n[env]\nkind = "gridworld"\nrows = 8\ncols = 8\n'
                 '[algo]\nname = "value-iteration"\n[slurm]\nntasks_per_node = 2\npartition = "cfgpart"\n')
    return p


def test_cpu_script_has_resources_signal_requeue_and_trap(cfg: Path, tmp_path: Path):
    r = submit([str(cfg), "--dry-run", "--nodes", "2", "--time", "00:10:00", "-c", "4", "--set", "algo.tol=1e-4"],
               tmp_path)
    assert r.returncode == 0, r.stderr
    s = r.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --time=00:10:00", "#SBATCH --partition=cfgpart", "#SBATCH --signal=B:USR1@300",
                 "#SBATCH --requeue", f"#SBATCH --output={tmp_path}/runs/t/%x-%j.out"):
        assert line in s
    assert "srun --mpi=pmi2" in s and 'OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"' in s
    assert "trap 'forward USR1' USR1" in s and "trap 'forward TERM' TERM" in s
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in s and "3)" in s
    assert "--set algo.tol=1e-4" in s
    assert 'RUN_DIR="$RUNS_ROOT/${SLURM_JOB_ID}"' in s
    assert "--gpus-per-node" not in s
    subprocess.run(["bash", "-n"], input=s, text=True, check=True, timeout=30)


def test_gpu_and_mpiexec_variants(cfg: Path, tmp_path: Path):
    r = submit([str(cfg), "--dry-run", "--gpus", "4", "--ntasks-per-node", "4", "--launcher", "mpiexec",
                "--partition", "gpu", "--account", "proj1", "--signal-seconds", "0"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = r.stdout
    assert "#SBATCH --gpus-per-node=4" in s and "#SBATCH --partition=gpu" in s and "#SBATCH --account=proj1" in s
    assert "--signal" not in s.split("set -uo")[0]
    assert "mpiexec" in s and "srun --mpi" not in s
    subprocess.run(["bash", "-n"], input=s, text=True, check=True, timeout=30)


def test_sweep_renders_a_job_array(cfg: Path, tmp_path: Path):
    r = submit([str(cfg), "--dry-run", "--sweep", "algo.gamma=0.9,0.95,0.99", "--array", "%2"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = r.stdout
    assert "#SBATCH --array=0-2%2" in s and "%x-%A_%a.out" in s
    for i, g in enumerate(("0.9", "0.95", "0.99")):
        assert f"{i}) CONFIG_ID=0; TASK_LABEL=gamma-{g}; SETS=(--set algo.gamma={g} );;" in s
    subprocess.run(["bash", "-n"], input=s, text=True, check=True, timeout=30)


def test_several_configs_make_an_array(cfg: Path, tmp_path: Path):
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace('name = "t"', 'name = "u"'))
    spec = build_spec([str(cfg), str(other)], [], [], {}, workdir=tmp_path)
    assert spec.array and [p.config_id for p in spec.points] == [0, 1]
    assert [p.label for p in spec.points] == ["job", "other"]
    assert 'name = "u"' in render(spec)


@pytest.mark.parametrize("args,needle", [
    (["--time", "soon"], "--time"),
    (["--time", "4"], "--signal-seconds"),
    (["--sweep", "algo.gama=0.9,0.99"], "gama"),
    (["--sweep", "gamma"], "--sweep"),
    (["--set", "algo.gamma=2.0"], "gamma"),
    (["--nodes", "0"], "nodes"),
    (["--launcher", "ssh"], "launcher"),
    (["--array", "x"], "--array"),
    (["--mem", "32G\ntouch /tmp/x"], "--mem"),
    (["--mem", "32 G"], "--mem"),
    (["--partition", "a b"], "--partition"),
    (["--partition", "gpu\n#SBATCH --exclusive"], "--partition"),
    (["--account", "x$(id)"], "--account"),
    (["--qos", "normal;id"], "--qos"),
    (["--time", "99:99:99"], "--time"),
    (["--time", "1-24"], "--time"),
    (["--time", "1:60"], "--time"),
    (["--time", "1-1:1:1:1"], "--time"),
    (["--time", ""], "--time"),
])
def test_bad_arguments_exit_2_with_one_line(cfg: Path, tmp_path: Path, args: list[str], needle: str):
    r = submit([str(cfg), "--dry-run", *args], tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


@pytest.mark.parametrize("toml,needle", [
    ('mem = "32G\\ntouch /tmp/x"', "[slurm] mem"),
    ('partition = "a b"', "[slurm] partition"),
    ('account = "`id`"', "[slurm] account"),
    ('qos = "q&"', "[slurm] qos"),
    ('mpi = "pmi2; id"', "[slurm] mpi"),
    ('time = "24:60:00"', "[slurm] time"),
    ('extra = ["--exclusive\\necho injected"]', "[slurm] extra"),
    ('extra = ["exclusive"]', "[slurm] extra"),
])
def test_bad_slurm_section_values_exit_2_naming_file_and_key(tmp_path: Path, toml: str, needle: str):
    p = tmp_path / "bad.toml"
    p.write_text(f'[run]\nout_dir = "runs"\n[slurm]\n{toml}\n')
    r = submit([str(p), "--dry-run"], tmp_path)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr and "bad.toml" in r.stderr


def test_plain_resource_values_render(cfg: Path, tmp_path: Path):
    r = submit([str(cfg), "--dry-run", "--mem", "4000M", "--partition", "gpu,cpu", "--account", "proj-1_a.b",
                "--qos", "high+", "--time", "1-23:59:59"], tmp_path)
    assert r.returncode == 0, r.stderr
    for line in ("#SBATCH --mem=4000M", "#SBATCH --partition=gpu,cpu", "#SBATCH --account=proj-1_a.b",
                 "#SBATCH --qos=high+", "#SBATCH --time=1-23:59:59"):
        assert line in r.stdout


def test_missing_config_exit_2(tmp_path: Path):
    r = submit([str(tmp_path / "nope.toml"), "--dry-run"], tmp_path)
    assert r.returncode == 2 and "nope.toml" in r.stderr


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_example_job_configs_validate_and_render(path: Path, tmp_path: Path):
    load_config(str(path))
    render(build_spec([str(path)], [], [], {}, workdir=tmp_path))


def test_time_limits():
    from hpcql.slurm.render import time_limit_seconds

    assert [time_limit_seconds(t) for t in ("5", "5:30", "01:00:00", "2-0", "1-01:02", "1-00:00:01")] == \
        [300, 330, 3600, 172800, 90120, 86401]
    # the leading field may be large (SLURM carries it); the fields after it are bounded
    assert [time_limit_seconds(t) for t in ("90", "90:30", "36:00:00", "1-23:59:59")] == \
        [5400, 5430, 129600, 172799]
    for bad in ("99:99:99", "00:60:00", "00:00:60", "1:60", "1-24", "1-0:60", "1-0:0:60", "1-1:1:1:1", "1-",
                "-1", "1:2:3:4", ":30", "1::2", "", " 5", "5\n", "\u0663"):
        with pytest.raises(BadInput, match="--time"):
            time_limit_seconds(bad)


def test_signal_must_come_before_the_time_limit(cfg: Path, tmp_path: Path):
    r = submit([str(cfg), "--dry-run", "--time", "5"], tmp_path)  # default signal_seconds = 300
    assert r.returncode == 2 and "--signal-seconds" in r.stderr


def test_helpers():
    assert parse_sweeps(["a.x=1,2", "b.y=3"]) == [["a.x=1", "b.y=3"], ["a.x=2", "b.y=3"]]
    assert label_for(["algo.gamma=0.9", "env.rows=8"]) == "gamma-0.9_rows-8"
    assert parse_job_id("1234;cluster\n") == "1234" and parse_job_id("77\n") == "77"
