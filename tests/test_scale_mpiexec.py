"""`hpcql scale --launcher mpiexec`: strong and weak tables for 1 and 2 ranks; the projection model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcql.scaling.projection import fit, halo, project
from hpcql.scaling.runner import RunRecord

CONFIG = ('[run]\nname = "s"\nout_dir = "runs"\n[env]\nkind = "gridworld"\nrows = 12\ncols = 16\n'
          '[algo]\nname = "value-iteration"\ngamma = 0.9\ntol = 1e-6\n')


def scale(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "hpcql", "scale", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hpcql scale timed out after {timeout}s\n{exc.stderr}")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(CONFIG)
    return p


@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_scale_mpiexec_writes_table_plots_and_projection(cfg: Path, tmp_path: Path, mode: str):
    out = tmp_path / mode
    r = scale([str(cfg), "--ranks", "1,2", "--mode", mode, "--repeat", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert [int(x["ranks"]) for x in rows] == [1, 2] and all(int(x["runs"]) == 2 for x in rows)
    states = [int(x["states"]) for x in rows]
    assert states == ([192, 192] if mode == "strong" else [192, 384])
    assert float(rows[0]["efficiency"]) == pytest.approx(1.0) and float(rows[1]["efficiency"]) > 0
    assert float(rows[1]["compute_s"]) > 0 and float(rows[1]["exchange_s"]) >= 0
    md = (out / "scaling.md").read_text()
    assert "| ranks |" in md and "efficiency" in md and "Phase breakdown" in md
    assert len((out / "scaling-runs.csv").read_text().splitlines()) == 5
    for png in ("speedup.png", "efficiency.png", "phases.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    proj = json.loads((out / "projection.json").read_text())
    assert "projection" in proj["label"] and proj["parameters"]["alpha_seconds"] is not None
    assert any(p["ranks"] == 1024 for p in proj["strong"])
    assert (out / "projection.md").read_text().startswith("# PROJECTION (model, not measured)")


def test_weak_scaling_refuses_fixed_models(tmp_path: Path):
    p = tmp_path / "f.toml"
    p.write_text('[env]\nkind = "gymnasium-tabular"\n[algo]\nname = "value-iteration"\n')
    r = scale([str(p), "--ranks", "1,2", "--mode", "weak", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2 and "weak" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--ranks", "1,x"], "--ranks"), (["--ranks", "0,2"], "--ranks"), (["--ranks", "1", "--repeat", "0"], "--repeat"),
    (["--ranks", "1", "--mode", "medium"], "--mode"),
    (["--ranks", "1,2", "--project-ranks", "0"], "--project-ranks"),
    (["--ranks", "1", "--project-ranks", "100,-4"], "--project-ranks"),
    (["--ranks", "1", "--project-ranks", "1.5"], "--project-ranks"),
    (["--ranks", "1", "--project-states", "0"], "--project-states"),
    (["--ranks", "1", "--project-states", ","], "--project-states"),
    (["--ranks", "1", "--alpha", "-1"], "--alpha"), (["--ranks", "1", "--beta", "nan"], "--beta"),
    (["--ranks", "1", "--alpha", "inf"], "--alpha"),
    (["--ranks", "1", "--timeout", "0"], "--timeout"), (["--ranks", "1", "--timeout", "-5"], "--timeout"),
    (["--ranks", "1", "--time", "99:99:99"], "--time"), (["--ranks", "1", "--partition", "a b"], "--partition"),
    (["--ranks", "1", "--mpi", "pmi2;id"], "--mpi"),
    (["--ranks", "1,2", "--mode", "weak", "--set", "env.rows=0"], "rows"),
])
def test_bad_arguments_exit_2_before_any_run(cfg: Path, tmp_path: Path, args: list[str], needle: str):
    r = scale([str(cfg), *args, "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "runs").exists()  # rejected up front: nothing was launched


@pytest.mark.parametrize("sub", ["", "sub"])
def test_out_that_is_a_file_exits_2_and_is_kept(cfg: Path, tmp_path: Path, sub: str):
    existing = tmp_path / "existing"
    existing.write_text("keep me\n")
    r = scale([str(cfg), "--ranks", "1", "--repeat", "1", "--out", str(existing / sub)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--out" in r.stderr and str(existing) in r.stderr
    assert existing.read_text() == "keep me\n"


def test_bad_input_in_a_run_exits_2_with_its_message(tmp_path: Path):
    """A run that exits 2 (here: an MDP file whose row 1 sums to 1.4) stops the study with that one line."""
    from hpcql.mdp import write_mdp

    write_mdp(tmp_path / "bad.h5", [0, 1, 3], [0, 0, 1], [1.0, 0.7, 0.7], [[0.0], [1.0]], discount=0.9)
    p = tmp_path / "m.toml"
    p.write_text(f'[env]\nkind = "mdp-file"\npath = "{tmp_path / "bad.h5"}"\n[algo]\nname = "value-iteration"\n')
    r = scale([str(p), "--ranks", "1,2", "--repeat", "2", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcql: error: ") and "bad.h5" in lines[0], r.stderr
    assert "sum" in lines[0] and "run failed" not in lines[0]
    assert [d.name for d in (tmp_path / "o" / "runs").iterdir()] == ["ranks00001-rep0"]  # stopped at once
    assert not (tmp_path / "o" / "scaling.csv").exists()


def _record(ranks: int, states: int, iters: int, compute: float, exch: float, red: float) -> RunRecord:
    ph = {"compute": {"min": compute, "mean": compute, "max": compute},
          "exchange": {"min": exch, "mean": exch, "max": exch}, "reduce": {"min": red, "mean": red, "max": red}}
    return RunRecord(ranks, 0, states, compute + exch + red, iters, ph, "", {"kind": "gridworld", "rows": 100,
                                                                            "cols": 100, "states": states})


def test_fit_recovers_alpha_beta_from_synthetic_runs():
    alpha, beta, c = 2e-6, 1e-9, 1e-8
    recs = []
    for p, rows in ((2, 100), (4, 100), (8, 400)):
        problem = {"kind": "gridworld", "rows": rows, "cols": 100, "states": rows * 100}
        m, b = halo(problem, rows * 100, p)
        L = {2: 1, 4: 2, 8: 3}[p]
        rec = _record(p, rows * 100, 10, 10 * c * rows * 100 / p, 10 * (m * alpha + b * beta),
                      10 * L * (alpha + 8 * beta))
        rec.problem = problem
        recs.append(rec)
    params = fit(recs)
    assert params["alpha_seconds"] == pytest.approx(alpha, rel=1e-6)
    assert params["beta_seconds_per_byte"] == pytest.approx(beta, rel=1e-6)
    assert params["c_seconds_per_state"] == pytest.approx(c)
    pt = project(params, {"kind": "gridworld"}, 1e9, 1024)
    assert 0 < pt["efficiency"] < 1 and pt["compute_s"] == pytest.approx(c * 1e9 / 1024)
    assert halo({"kind": "gridworld", "cols": 100}, 1e4, 1) == (0.0, 0.0)


def test_an_earlier_study_is_kept_unless_overwrite(cfg: Path, tmp_path: Path):
    out = tmp_path / "o"
    args = [str(cfg), "--ranks", "1", "--repeat", "1", "--out", str(out)]
    assert scale(args, tmp_path).returncode == 0
    before = (out / "scaling.csv").read_bytes()
    r = scale(args, tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--overwrite" in r.stderr, r.stderr
    assert (out / "scaling.csv").read_bytes() == before
    assert scale([*args, "--overwrite"], tmp_path).returncode == 0
